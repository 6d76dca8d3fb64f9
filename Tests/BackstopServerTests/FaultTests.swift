// Faults around a running server: logs that cannot be written (disk full), a table that
// becomes unreadable, a DNS server answering garbage. Every request must still get an
// answer within the deadline, the right fail action, and nothing loaded may be lost.

import Testing
import Foundation
@testable import BackstopCore
@testable import BackstopServer

/// A UDP "DNS server" that answers every query with the query's ID and then junk.
final class GarbageDNSServer: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private var running = true

    init() {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        self.port = Int(UInt16(bigEndian: address.sin_port))
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func start() {
        let thread = Thread { self.serve() }
        thread.start()
    }

    private func serve() {
        var rng = SystemRandomNumberGenerator()
        var buffer = [UInt8](repeating: 0, count: 1500)
        while running {
            var peer = sockaddr_storage()
            var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &peerLength) } }
            }
            guard n >= 2 else { continue }
            var reply = [buffer[0], buffer[1]]
            for _ in 0..<Int.random(in: 0...80, using: &rng) { reply.append(UInt8.random(in: 0...255, using: &rng)) }
            _ = reply.withUnsafeBytes { raw in
                withUnsafePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, raw.baseAddress, raw.count, 0, $0, peerLength) } }
            }
        }
        close(fd)
    }

    func stop() { running = false }
}

@Suite(.serialized) struct FaultTests {
    @Test func logsThatCannotBeWrittenDoNotStopAnswers() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[log]\nlevel = \"debug\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: backstopBinary)
        process.arguments = ["serve", "--config", path]
        let full = FileHandle(forWritingAtPath: "/dev/full")!
        process.standardOutput = full
        process.standardError = full
        try process.run()
        let client = try await waitForClient(port: port)
        for _ in 0..<200 { #expect(try client.ask(rcptRequest) == "action=DUNNO") }
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }

    @Test func unreadableTableKeepsTheLastGoodOne() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let table = dir + "/recipients"
        try "alice@example.test OK\n".write(toFile: table, atomically: true, encoding: .utf8)
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\nrcpt = [\"recipients\"]\n[recipients]\ntables = [\"recipients\"]\nreload_interval = \"100ms\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        func ask(_ recipient: String) throws -> String? {
            var request = rcptRequest
            request[4] = ("recipient", recipient)
            return try client.ask(request)
        }
        #expect(try ask("alice@example.test")?.hasPrefix("action=DUNNO") == true)
        #expect(try ask("mallory@example.test") == "action=550 5.1.1 User unknown")
        // The table becomes something that cannot be read as a file.
        try FileManager.default.removeItem(atPath: table)
        try FileManager.default.createDirectory(atPath: table, withIntermediateDirectories: false)
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("cannot read the recipient table: a directory, not a regular file"), "the failure is logged: \(serve.log)")
        // Alice is still known; an unknown recipient is deferred, not refused, while the
        // newest version of the table cannot be loaded.
        for _ in 0..<20 {
            #expect(try ask("alice@example.test")?.hasPrefix("action=DUNNO") == true)
            #expect(try ask("mallory@example.test") == "action=450 4.1.1 Recipient not known yet: the recipient table is being corrected, try again later")
        }
    }

    @Test func dnsAnsweringGarbageGivesTheTemperrorActionInTime() async throws {
        let dns = GarbageDNSServer()
        dns.start()
        defer { dns.stop() }
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        let text = "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\nrcpt = [\"spf\"]\ndeadline = \"3s\"\n"
            + "[spf]\nresolvers = [\"127.0.0.1:\(dns.port)\"]\ntrusted_networks = []\ndns_timeout = \"500ms\"\nevaluation_deadline = \"2s\"\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        for i in 0..<5 {
            var request = rcptRequest
            request[3] = ("sender", "user@domain\(i).example")
            request[5] = ("instance", "garbage.\(i)")
            let started = Date()
            let answer = try client.ask(request)
            #expect(Date().timeIntervalSince(started) < 3.5)
            #expect(answer?.hasPrefix("action=DEFER_IF_PERMIT 4.7.24") == true, "\(answer ?? "nil")")
        }
    }
}
