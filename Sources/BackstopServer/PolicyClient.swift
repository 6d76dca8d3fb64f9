// A small blocking client for the policy protocol, used by `backstop query`, the tests and
// the benchmark's target mode: connect, send one request, read one answer block. Connecting,
// sending and each wait for an answer give up after `timeoutSeconds` (10 s by default).

import Foundation
import BackstopCore

public final class PolicyClient {
    private let fd: Int32
    private var pending: [UInt8] = []

    public init(endpoint: ListenerSettings.Endpoint, timeoutSeconds: Int = 10) throws {
        // Connect before `fd` is set: an initializer that throws after every stored
        // property is set runs deinit, which would close the descriptor a second time (and
        // with it whatever another thread opened under the same number meanwhile).
        fd = try Self.connect(endpoint, timeoutSeconds: timeoutSeconds)
    }

    /// A connected socket, or an error with the socket already closed.
    private static func connect(_ endpoint: ListenerSettings.Endpoint, timeoutSeconds: Int) throws -> Int32 {
        let fd: Int32
        switch endpoint {
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
                throw ServerError("cannot resolve \(host)")
            }
            defer { freeaddrinfo(result) }
            // Every address the name has, in order ("localhost" may give ::1 first while the
            // server listens on 127.0.0.1), each for at most `timeoutSeconds` (Linux applies
            // SO_SNDTIMEO to connect).
            var next: UnsafeMutablePointer<addrinfo>? = info
            var connected: Int32 = -1
            var failure = ""
            while let candidate = next, connected < 0 {
                next = candidate.pointee.ai_next
                let attempt = socket(candidate.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
                guard attempt >= 0 else { failure = String(cString: strerror(errno)); continue }
                var limit = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
                setsockopt(attempt, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                if Glibc.connect(attempt, candidate.pointee.ai_addr, candidate.pointee.ai_addrlen) == 0 {
                    connected = attempt
                } else {
                    failure = errno == EINPROGRESS ? "no answer within \(timeoutSeconds) s" : String(cString: strerror(errno))
                    close(attempt)
                }
            }
            guard connected >= 0 else { throw ServerError("cannot connect to \(host):\(port): \(failure)") }
            fd = connected
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        case .unix(let path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw ServerError("socket: \(String(cString: strerror(errno)))") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(fd)
                throw ServerError("socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
            }
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard ok == 0 else {
                let message = String(cString: strerror(errno))
                close(fd)
                throw ServerError("cannot connect to unix:\(path): \(message)")
            }
        }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    deinit { close(fd) }

    /// Makes a blocked send fail after `seconds` instead of waiting forever.
    public func setSendTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends raw bytes as they are.
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw ServerError("send failed: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    public func send(_ pairs: [(String, String)]) throws {
        var text = ""
        for (name, value) in pairs { text += "\(name)=\(value)\n" }
        text += "\n"
        try send(Array(text.utf8))
    }

    /// Reads one answer block (lines up to an empty line). Nil when the server closed.
    public func readAnswer() throws -> String? {
        while true {
            if let end = findBlockEnd() {
                let block = Array(pending[..<end])
                pending.removeFirst(end + 2)
                return String(decoding: block, as: UTF8.self)
            }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return nil }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { throw ServerError("timed out waiting for an answer") }
                if errno == ECONNRESET { return nil }
                throw ServerError("receive failed: \(String(cString: strerror(errno)))")
            }
            pending.append(contentsOf: buffer[..<n])
        }
    }

    /// Reads until the peer closes (for simple HTTP in tests).
    public func readAll() throws -> String {
        var all = pending
        pending = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            all.append(contentsOf: buffer[..<n])
        }
        return String(decoding: all, as: UTF8.self)
    }

    private func findBlockEnd() -> Int? {
        guard pending.count >= 2 else { return nil }
        for i in 0..<(pending.count - 1) where pending[i] == 10 && pending[i + 1] == 10 { return i }
        return nil
    }

    /// Sends a request and returns the answer block, e.g. "action=DUNNO".
    public func ask(_ pairs: [(String, String)]) throws -> String? {
        try send(pairs)
        return try readAnswer()
    }
}
