// A small blocking DNS stub client for SPF: one question to the configured resolvers over
// UDP, again over TCP when the answer is truncated, bounded by a timeout. It runs only on
// the SPF worker threads (libspf2 asks synchronously). It does not recurse, validate
// DNSSEC or cache: the cache is DNSCache, in front of it.

import Foundation

/// One resolver to ask: a numeric address and a port.
public struct DNSResolverAddress: Sendable, Hashable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "192.0.2.53", "192.0.2.53:5353", "::1", "[::1]:5353".
    public init?(_ text: String) {
        let t = text.trimmingSpaces
        var host = t
        var port = 53
        if t.hasPrefix("[") {
            guard let close = t.firstIndex(of: "]") else { return nil }
            host = String(t[t.index(after: t.startIndex)..<close])
            let rest = t[t.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { return nil }
                port = p
            }
        } else if t.filter({ $0 == ":" }).count == 1, let colon = t.firstIndex(of: ":") {
            host = String(t[..<colon])
            guard let p = Int(t[t.index(after: colon)...]) else { return nil }
            port = p
        }
        guard (1...65535).contains(port), IPAddress(host) != nil else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The nameservers of /etc/resolv.conf, or 127.0.0.1:53 when there are none.
    public static func system(resolvConf path: String = "/etc/resolv.conf") -> [DNSResolverAddress] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [DNSResolverAddress(host: "127.0.0.1", port: 53)] }
        var out: [DNSResolverAddress] = []
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count >= 2, words[0] == "nameserver" else { continue }
            var host = String(words[1])
            if let zone = host.firstIndex(of: "%") { host = String(host[..<zone]) }
            if IPAddress(host) != nil { out.append(DNSResolverAddress(host: host, port: 53)) }
        }
        return out.isEmpty ? [DNSResolverAddress(host: "127.0.0.1", port: 53)] : out
    }
}

public enum DNSType: UInt16, Sendable {
    case a = 1, cname = 5, ptr = 12, mx = 15, txt = 16, aaaa = 28, spf = 99
}

public enum DNSRecordData: Sendable, Hashable {
    case address([UInt8])        // 4 octets (A) or 16 (AAAA)
    case name(String)            // PTR, CNAME target
    case mx(preference: Int, exchange: String)
    case txt([[UInt8]])          // the character-strings of one TXT record
}

public struct DNSAnswer: Sendable {
    public enum Status: Sendable, Equatable {
        case success                 // records may still be empty (NODATA)
        case nameError               // NXDOMAIN
        case serverFailure           // SERVFAIL, REFUSED, a malformed answer, …
        case timeout
        case invalidName             // never asked: a label over 63 octets, an empty label, …
    }
    public var status: Status
    public var records: [DNSRecordData]
    public var ttl: UInt32
    /// A CNAME the resolver did not follow (no record of the asked type came with it).
    public var alias: String?

    public init(status: Status, records: [DNSRecordData] = [], ttl: UInt32 = 0) {
        self.status = status
        self.records = records
        self.ttl = ttl
    }

    /// NXDOMAIN or no record of the asked type: a "void lookup" in RFC 7208 §4.6.4 terms.
    public var isVoid: Bool { status == .nameError || (status == .success && records.isEmpty) || status == .invalidName }
    public var isTemporaryFailure: Bool { status == .serverFailure || status == .timeout }
}

public struct DNSClient: Sendable {
    public let resolvers: [DNSResolverAddress]

    public init(resolvers: [DNSResolverAddress]) {
        self.resolvers = resolvers.isEmpty ? DNSResolverAddress.system() : resolvers
    }

    /// Asks for `name`/`type`, trying the resolvers in order, within `timeout` in total.
    public func query(_ name: String, _ type: DNSType, timeout: TimeInterval) -> DNSAnswer {
        guard let question = DNSWire.encodeName(name) else { return DNSAnswer(status: .invalidName) }
        let end = Date().addingTimeInterval(timeout)
        var last = DNSAnswer(status: .timeout)
        for (index, resolver) in resolvers.enumerated() {
            let remaining = end.timeIntervalSinceNow
            guard remaining > 0.001 else { break }
            // Leave the later resolvers a share of the time.
            let share = remaining / Double(resolvers.count - index)
            let budget = index == resolvers.count - 1 ? remaining : max(share, min(remaining, 0.2))
            last = ask(resolver, question: question, type: type, until: Date().addingTimeInterval(budget))
            if last.status == .success || last.status == .nameError { break }
        }
        // Follow an alias the resolver left to us, a few hops at most.
        var hops = 0
        while last.status == .success, last.records.isEmpty, let alias = last.alias, hops < 8 {
            hops += 1
            let remaining = end.timeIntervalSinceNow
            guard remaining > 0.001, let target = DNSWire.encodeName(alias) else { return DNSAnswer(status: .timeout) }
            for resolver in resolvers {
                last = ask(resolver, question: target, type: type, until: Date().addingTimeInterval(end.timeIntervalSinceNow))
                if last.status == .success || last.status == .nameError { break }
            }
        }
        return last
    }

    private func ask(_ resolver: DNSResolverAddress, question: [UInt8], type: DNSType, until end: Date) -> DNSAnswer {
        let id = UInt16.random(in: 0...UInt16.max)
        let packet = DNSWire.query(id: id, name: question, type: type)
        guard let udp = DNSSocket(resolver, stream: false) else { return DNSAnswer(status: .serverFailure) }
        defer { udp.close() }
        guard udp.send(packet) else { return DNSAnswer(status: .serverFailure) }
        while true {
            guard let reply = udp.receive(until: end) else { return DNSAnswer(status: .timeout) }
            guard let parsed = DNSWire.parse(reply, id: id, question: question, type: type) else { continue }
            if parsed.truncated { break }
            return parsed.answer
        }
        // Truncated: the same question over TCP.
        guard let tcp = DNSSocket(resolver, stream: true, until: end) else { return DNSAnswer(status: .timeout) }
        defer { tcp.close() }
        var framed = [UInt8(packet.count >> 8), UInt8(packet.count & 0xFF)]
        framed += packet
        guard tcp.send(framed), let head = tcp.read(2, until: end) else { return DNSAnswer(status: .timeout) }
        let length = Int(head[0]) << 8 | Int(head[1])
        guard let body = tcp.read(length, until: end),
              let parsed = DNSWire.parse(body, id: id, question: question, type: type) else {
            return DNSAnswer(status: .timeout)
        }
        return parsed.answer
    }
}

/// A connected UDP or TCP socket with deadline-bounded I/O.
private struct DNSSocket {
    let fd: Int32

    init?(_ resolver: DNSResolverAddress, stream: Bool, until end: Date = .distantFuture) {
        var storage = sockaddr_storage()
        var length: socklen_t
        var family: Int32
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, resolver.host, &v4) == 1 {
            family = AF_INET
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(resolver.port).bigEndian)
            sin.sin_addr = v4
            withUnsafeBytes(of: sin) { raw in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) } }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, resolver.host, &v6) == 1 {
            family = AF_INET6
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(UInt16(resolver.port).bigEndian)
            sin6.sin6_addr = v6
            withUnsafeBytes(of: sin6) { raw in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) } }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            return nil
        }
        #if canImport(Glibc)
        let kind = Int32(stream ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        #else
        let kind = stream ? SOCK_STREAM : SOCK_DGRAM
        #endif
        let fd = socket(family, kind, 0)
        guard fd >= 0 else { return nil }
        #if !canImport(Glibc)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
        self.fd = fd
        let rc = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
        }
        if rc != 0 {
            guard errno == EINPROGRESS, DNSSocket.wait(fd, events: Int16(POLLOUT), until: end) else {
                closeSocket(fd)
                return nil
            }
            var error: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size)
            if error != 0 {
                closeSocket(fd)
                return nil
            }
        }
    }

    static func wait(_ fd: Int32, events: Int16, until end: Date) -> Bool {
        while true {
            let remaining = end.timeIntervalSinceNow
            if remaining <= 0 { return false }
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&pfd, 1, Int32(min(remaining * 1000, 60_000).rounded(.up)))
            if rc > 0 { return true }
            if rc < 0 && errno != EINTR { return false }
        }
    }

    func send(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { sendSocket(fd, $0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN, DNSSocket.wait(fd, events: Int16(POLLOUT), until: Date().addingTimeInterval(1)) { continue }
                return false
            }
            offset += n
        }
        return true
    }

    /// One datagram, or nil at the deadline.
    func receive(until end: Date) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65535)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n >= 0 { return Array(buffer[..<n]) }
            if errno == EINTR { continue }
            guard errno == EAGAIN || errno == EWOULDBLOCK, DNSSocket.wait(fd, events: Int16(POLLIN), until: end) else { return nil }
        }
    }

    /// Exactly `count` octets from a stream, or nil at the deadline or on close.
    func read(_ count: Int, until end: Date) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: max(count, 1))
        while out.count < count {
            let want = count - out.count
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, want, 0) }
            if n > 0 { out += buffer[..<n]; continue }
            if n == 0 { return nil }
            if errno == EINTR { continue }
            guard errno == EAGAIN || errno == EWOULDBLOCK, DNSSocket.wait(fd, events: Int16(POLLIN), until: end) else { return nil }
        }
        return out
    }

    func close() { closeSocket(fd) }
}

// Free functions, so the system calls are not shadowed by DNSSocket's methods.
private func closeSocket(_ fd: Int32) { _ = close(fd) }

private func sendSocket(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
    #if os(Linux)
    return send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
    #else
    return send(fd, bytes.baseAddress, bytes.count, 0)
    #endif
}

/// DNS message encoding and decoding (RFC 1035), only as much as SPF needs.
enum DNSWire {
    /// The name in wire form, or nil when it cannot be asked (RFC 1035 §2.3.4 limits).
    static func encodeName(_ name: String) -> [UInt8]? {
        var text = Substring(name)
        if text.hasSuffix(".") { text = text.dropLast() }
        guard !text.isEmpty else { return nil }
        var out: [UInt8] = []
        for label in text.split(separator: ".", omittingEmptySubsequences: false) {
            let bytes = Array(label.utf8)
            guard (1...63).contains(bytes.count) else { return nil }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
        return out.count <= 255 ? out : nil
    }

    static func query(id: UInt16, name: [UInt8], type: DNSType) -> [UInt8] {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        out += name
        out += [UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), 0, 1]
        return out
    }

    struct Parsed {
        var truncated: Bool
        var answer: DNSAnswer
    }

    /// Parses a reply to our question; nil when it is not one (wrong id or question).
    static func parse(_ bytes: [UInt8], id: UInt16, question: [UInt8], type: DNSType) -> Parsed? {
        var reader = Reader(bytes: bytes)
        guard bytes.count >= 12, reader.u16() == id else { return nil }
        guard let flags = reader.u16(), flags & 0x8000 != 0,
              let qd = reader.u16(), let an = reader.u16(), reader.u16() != nil, reader.u16() != nil else { return nil }
        let truncated = flags & 0x0200 != 0
        let rcode = flags & 0x000F
        // Some servers send REFUSED or SERVFAIL without the question: take it as the failure it is.
        if qd == 0, rcode != 0, rcode != 3 { return Parsed(truncated: false, answer: DNSAnswer(status: .serverFailure)) }
        guard qd == 1, let qname = reader.name(), reader.u16() == type.rawValue, reader.u16() == 1 else { return nil }
        guard let asked = decodeNameForComparison(question), qname.lowercased() == asked.lowercased() else { return nil }
        if truncated { return Parsed(truncated: true, answer: DNSAnswer(status: .timeout)) }
        switch rcode {
        case 0: break
        case 3: return Parsed(truncated: false, answer: DNSAnswer(status: .nameError, ttl: 60))
        default: return Parsed(truncated: false, answer: DNSAnswer(status: .serverFailure))
        }
        var records: [DNSRecordData] = []
        var ttl = UInt32.max
        var cnameTarget: String?
        for _ in 0..<an {
            guard reader.name() != nil, let rtype = reader.u16(), reader.u16() != nil, let rttl = reader.u32(),
                  let rdlength = reader.u16() else { return Parsed(truncated: false, answer: DNSAnswer(status: .serverFailure)) }
            let start = reader.offset
            let end = start + Int(rdlength)
            guard end <= bytes.count else { return Parsed(truncated: false, answer: DNSAnswer(status: .serverFailure)) }
            if rtype == type.rawValue {
                ttl = min(ttl, rttl)
                switch type {
                case .a where rdlength == 4, .aaaa where rdlength == 16:
                    records.append(.address(Array(bytes[start..<end])))
                case .ptr, .cname:
                    if let n = reader.name() { records.append(.name(n)) }
                case .mx:
                    if let pref = reader.u16(), let n = reader.name() { records.append(.mx(preference: Int(pref), exchange: n)) }
                case .txt, .spf:
                    var strings: [[UInt8]] = []
                    var p = start
                    while p < end {
                        let len = Int(bytes[p])
                        guard p + 1 + len <= end else { break }
                        strings.append(Array(bytes[(p + 1)..<(p + 1 + len)]))
                        p += 1 + len
                    }
                    records.append(.txt(strings))
                default: break
                }
            } else if rtype == DNSType.cname.rawValue {
                ttl = min(ttl, rttl)
                if let n = reader.name() { cnameTarget = n }
            }
            reader.offset = end
        }
        if records.isEmpty, let cnameTarget {
            // The resolver did not follow the alias for us: report it so the caller can.
            var answer = DNSAnswer(status: .success, records: [], ttl: ttl)
            answer.alias = cnameTarget
            return Parsed(truncated: false, answer: answer)
        }
        return Parsed(truncated: false, answer: DNSAnswer(status: .success, records: records, ttl: ttl == .max ? 60 : ttl))
    }

    static func decodeNameForComparison(_ wire: [UInt8]) -> String? {
        var reader = Reader(bytes: wire)
        return reader.name()
    }

    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func u16() -> UInt16? {
            guard offset + 2 <= bytes.count else { return nil }
            defer { offset += 2 }
            return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        }

        mutating func u32() -> UInt32? {
            guard let hi = u16(), let lo = u16() else { return nil }
            return UInt32(hi) << 16 | UInt32(lo)
        }

        /// A possibly compressed name, as dotted text without the final dot.
        mutating func name() -> String? {
            var labels: [String] = []
            var p = offset
            var jumped = false
            var hops = 0
            while true {
                guard p < bytes.count else { return nil }
                let len = Int(bytes[p])
                if len == 0 {
                    if !jumped { offset = p + 1 }
                    break
                }
                if len & 0xC0 == 0xC0 {
                    guard p + 1 < bytes.count, hops < 64 else { return nil }
                    let target = (len & 0x3F) << 8 | Int(bytes[p + 1])
                    if !jumped { offset = p + 2 }
                    jumped = true
                    hops += 1
                    p = target
                    continue
                }
                guard len <= 63, p + 1 + len <= bytes.count else { return nil }
                labels.append(String(decoding: bytes[(p + 1)..<(p + 1 + len)], as: UTF8.self))
                p += 1 + len
            }
            return labels.joined(separator: ".")
        }
    }
}
