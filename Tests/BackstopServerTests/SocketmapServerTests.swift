// The socketmap listener over real sockets: every reply kind from the three maps, requests
// split or pipelined, and the hostile cases of the policy protocol (malformed netstrings,
// oversized lengths, a client that stops mid-request, the allow list): each closes only
// its own connection without an answer, and the server keeps answering.

import Foundation
import Testing
@testable import BackstopCore
@testable import BackstopServer

extension RawConnection {
    /// Reads one netstring reply ("LEN:TEXT,"), or nil when the peer closes or `seconds` pass first.
    func readNetstring(seconds: Double = 5) -> String? {
        var all: [UInt8] = []
        let end = Date().addingTimeInterval(seconds)
        var byte: UInt8 = 0
        while Date() < end {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(max(1, end.timeIntervalSinceNow * 1000))) > 0 else { continue }
            guard recv(fd, &byte, 1, 0) == 1 else { return nil }
            all.append(byte)
            if let colon = all.firstIndex(of: UInt8(ascii: ":")), let length = Int(String(decoding: all[..<colon], as: UTF8.self)),
               all.count == colon + 1 + length + 1 {
                return String(decoding: all[(colon + 1)..<(all.count - 1)], as: UTF8.self)
            }
        }
        return nil
    }

    func ask(_ map: String, _ key: String) -> String? {
        let payload = "\(map) \(key)"
        send("\(payload.utf8.count):\(payload),")
        return readNetstring()
    }
}

private struct SocketmapServer {
    let server: PolicyServer
    let directory: String
    let batv: BATVCheck
    let recipients: RecipientsCheck

    static func start(_ extra: String = "", allow: String = "[\"127.0.0.0/8\"]") async throws -> SocketmapServer {
        let dir = tempDirectory()
        try "1 0123456789abcdef-secret-one\n".write(toFile: dir + "/batv-keys", atomically: false, encoding: .utf8)
        chmod(dir + "/batv-keys", 0o600)
        try "alice@example.org\nbob@example.org\n".write(toFile: dir + "/recipients", atomically: false, encoding: .utf8)
        let config = try Configuration.parse("""
            [[listen]]
            address = "127.0.0.1:0"
            protocol = "socketmap"
            allow = \(allow)
            [policy]
            rcpt = ["recipients", "batv"]
            [recipients]
            tables = ["recipients"]
            domains = ["example.org"]
            reload_interval = "0s"
            [batv]
            domains = ["example.org"]
            \(extra)
            """, file: dir + "/backstop.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: testLogger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        return SocketmapServer(server: server, directory: dir, batv: try #require(engine.checks["batv"] as? BATVCheck),
                               recipients: try #require(engine.checks["recipients"] as? RecipientsCheck))
    }

    var port: Int { Int(server.boundAddresses[0].split(separator: ":").last!)! }
    func connect() throws -> RawConnection { try RawConnection(port: port) }
}

@Suite(.serialized) struct SocketmapServerTests {
    @Test func everyReplyKind() async throws {
        let s = try await SocketmapServer.start()
        let c = try s.connect()
        let signed = try #require(c.ask("batv-sign", "alice@example.org"))
        #expect(signed.hasPrefix("OK prvs=1"), "\(signed)")
        let tagged = String(signed.dropFirst(3))
        #expect(s.batv.verification(of: tagged) == .valid(keyNumber: 1, daysLeft: 7))
        #expect(c.ask("batv-sign", "\"\"") == "NOTFOUND ", "the null sender, as Postfix asks for it")
        #expect(c.ask("batv-sign", "carol@example.net") == "NOTFOUND ")
        #expect(c.ask("batv-sign", tagged) == "NOTFOUND ", "never signed twice")
        #expect(c.ask("batv-strip", tagged) == "OK alice@example.org")
        let onMissingMailbox = try #require(s.batv.signedSender("zed@example.org"))
        #expect(c.ask("batv-strip", onMissingMailbox) == "NOTFOUND ", "a valid tag on a mailbox that does not exist")
        #expect(c.ask("recipients", "bob@example.org") == "OK bob@example.org")
        #expect(c.ask("recipients", "zed@example.org") == "NOTFOUND ")
        #expect(c.ask("recipients", "carol@example.net") == "NOTFOUND ")
        #expect(c.ask("recipients", tagged) == "OK \(tagged)", "a valid tag of ours")
        #expect(c.ask("recipients", "prvs=1792000000=zed@example.org") == "NOTFOUND ", "a tag on no mailbox")
        #expect(c.ask("relay", "x")?.hasPrefix("PERM no map named relay") == true)

        // The newest table edit is broken: an unknown address cannot be answered for sure.
        try "  continuation without an entry\n".write(toFile: s.directory + "/recipients", atomically: false, encoding: .utf8)
        #expect(!s.recipients.reload().isEmpty)
        #expect(c.ask("recipients", "zed@example.org") == "TEMP the newest edit of the recipient table is broken")
        #expect(c.ask("recipients", "alice@example.org") == "OK alice@example.org", "the last good table still answers")
        #expect(c.ask("batv-strip", onMissingMailbox) == "TEMP the newest edit of the recipient table is broken",
                "the mailbox may be what the broken edit adds")
        await s.server.stop()
    }

    @Test func splitAndPipelinedRequests() async throws {
        let s = try await SocketmapServer.start()
        let c = try s.connect()
        for byte in "28:recipients alice@example.org,".utf8 {
            c.send(String(decoding: [byte], as: UTF8.self))
        }
        #expect(c.readNetstring() == "OK alice@example.org")
        c.send("26:recipients bob@example.org,26:recipients zed@example.org,")
        #expect(c.readNetstring() == "OK bob@example.org")
        #expect(c.readNetstring() == "NOTFOUND ")
        await s.server.stop()
    }

    @Test func malformedRequestsCloseOnlyTheirConnection() async throws {
        let s = try await SocketmapServer.start()
        let good = try s.connect()
        #expect(good.ask("recipients", "bob@example.org") == "OK bob@example.org")
        for bad in ["GET / HTTP/1.1\r\n\r\n", "5:ab", "3:abc;", "0:,", ":x,", "10:recipients,", "5: abcd,"] {
            let c = try s.connect()
            c.send(bad)
            let unfinished = bad == "5:ab"
            let (text, closed) = c.readUntilClosed(seconds: unfinished ? 0.3 : 5)
            #expect(text.isEmpty, "no answer to \(bad.debugDescription)")
            #expect(closed != unfinished, unfinished ? "an unfinished request waits (for server.read_timeout)" : "\(bad.debugDescription) closes the connection")
        }
        #expect(good.ask("recipients", "bob@example.org") == "OK bob@example.org")
        await s.server.stop()
    }

    @Test func anOversizedLengthIsRefusedBeforeThePayload() async throws {
        let s = try await SocketmapServer.start()
        let c = try s.connect()
        c.send("10241:")  // SocketmapParser.defaultMaxLength is 10,240
        let (text, closed) = c.readUntilClosed(seconds: 5)
        #expect(text.isEmpty && closed)
        let big = String(repeating: "a", count: 10_000) + "@example.org"
        #expect(try s.connect().ask("recipients", big) == "NOTFOUND ", "a long key within the limit is answered")
        await s.server.stop()
    }

    @Test func aClientThatStopsMidRequestIsCutOff() async throws {
        let dir = tempDirectory()
        try "1 0123456789abcdef-secret-one\n".write(toFile: dir + "/k", atomically: false, encoding: .utf8)
        chmod(dir + "/k", 0o600)
        let config = try Configuration.parse("""
            [[listen]]
            address = "127.0.0.1:0"
            protocol = "socketmap"
            [server]
            read_timeout = "300ms"
            [batv]
            key_file = "k"
            domains = ["example.org"]
            """, file: dir + "/backstop.toml")
        let server = PolicyServer(config: config, engine: try EngineBuilder.build(config, previous: nil, logger: testLogger), logger: testLogger)
        try await server.start()
        let port = Int(server.boundAddresses[0].split(separator: ":").last!)!
        let c = try RawConnection(port: port)
        let started = Date()
        c.send("30:batv-sign al")
        let (text, closed) = c.readUntilClosed(seconds: 5)
        #expect(text.isEmpty && closed)
        #expect(Date().timeIntervalSince(started) < 3)
        #expect(try RawConnection(port: port).ask("recipients", "a@example.org")?.hasPrefix("PERM the recipients check is not configured") == true)
        await server.stop()
    }

    @Test func theAllowListApplies() async throws {
        let s = try await SocketmapServer.start(allow: "[\"10.0.0.0/8\"]")
        let c = try s.connect()
        c.send("26:recipients bob@example.org,")
        let (text, closed) = c.readUntilClosed(seconds: 5)
        #expect(text.isEmpty && closed)
        await s.server.stop()
    }
}

extension SocketmapServerTests {
    @Test func batvStripWithoutARecipientTableIsAFault() async throws {
        let dir = tempDirectory()
        try "1 0123456789abcdef-secret-one\n".write(toFile: dir + "/batv-keys", atomically: false, encoding: .utf8)
        chmod(dir + "/batv-keys", 0o600)
        let config = try Configuration.parse("[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"socketmap\"\n[batv]\ndomains = [\"example.org\"]\n",
                                             file: dir + "/backstop.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: testLogger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        let c = try RawConnection(port: Int(server.boundAddresses[0].split(separator: ":").last!)!)
        let signed = try #require((engine.checks["batv"] as? BATVCheck)?.signedSender("alice@example.org"))
        #expect(c.ask("batv-strip", signed) == "PERM batv-strip needs the recipients check ([recipients] section)")
        await server.stop()
    }
}
