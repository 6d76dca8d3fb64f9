// The socketmap's maps against engines built from configurations: a forged tag on a known
// mailbox is left to the batv check only where that check refuses it at RCPT for real;
// otherwise the recipients map itself says NOTFOUND, so Postfix never relays it tagged.

import Foundation
import Logging
import Testing
@testable import BackstopCore

private func engine(_ policy: String, batvExtra: String = "") throws -> PolicyEngine {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("maps-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try "1 0123456789abcdef-secret-one\n".write(toFile: dir + "/batv-keys", atomically: false, encoding: .utf8)
    chmod(dir + "/batv-keys", 0o600)
    try "alice@example.org\n".write(toFile: dir + "/recipients", atomically: false, encoding: .utf8)
    let config = try Configuration.parse("""
        [[listen]]
        address = "127.0.0.1:10034"
        protocol = "socketmap"
        [policy]
        \(policy)
        [recipients]
        domains = ["example.org"]
        reload_interval = "0s"
        [batv]
        domains = ["example.org"]
        \(batvExtra)
        """, file: dir + "/backstop.toml")
    return try EngineBuilder.build(config, previous: nil, logger: Logger(label: "t"))
}

private func ask(_ engine: PolicyEngine, _ map: String, _ key: String) -> SocketmapReply {
    SocketmapMaps.answer(SocketmapRequest(map: map, key: key), engine: engine).0
}

@Suite struct SocketmapMapsTests {
    /// Postfix with smtputf8_enable = no passes an 8-bit (Latin-1) sender as it came: the
    /// key is not UTF-8, and signing its text (the octet replaced by U+FFFD) would change
    /// the envelope sender into another address. No map answers for such a key.
    @Test func aKeyThatIsNotUTF8IsNotFound() throws {
        var parser = SocketmapParser()
        var requests: [SocketmapRequest] = []
        let latin1: [UInt8] = Array("28:batv-sign m".utf8) + [0xFC] + Array("ller@example.org,".utf8)
        try latin1.withUnsafeBytes { try parser.feed($0) { requests.append($0) } }
        let request = try #require(requests.first)
        #expect(!request.keyIsUTF8)
        let engine = try engine("rcpt = [\"recipients\", \"batv\"]")
        #expect(SocketmapMaps.answer(request, engine: engine).0 == .notFound)
        var plain = request
        plain.key = "muller@example.org"
        plain.keyIsUTF8 = true
        guard case .ok = SocketmapMaps.answer(plain, engine: engine).0 else { Issue.record("an ASCII sender is signed"); return }
    }

    @Test func aForgedTagIsRefusedByWhoeverRefusesIt() throws {
        let forged = "prvs=1792000000=alice@example.org"
        let enforcing = try engine("rcpt = [\"recipients\", \"batv\"]")
        #expect(ask(enforcing, "recipients", forged) == .ok(forged), "the batv check refuses it at RCPT, saying why")
        #expect(ask(enforcing, "recipients", "prvs=1792000000=zed@example.org") == .notFound, "no such mailbox, tag or not")
        for quiet in [try engine("rcpt = [\"recipients\"]"),
                      try engine("rcpt = [\"recipients\", \"batv\"]", batvExtra: "test_mode = true"),
                      try engine("test_mode = true\nrcpt = [\"recipients\", \"batv\"]")] {
            #expect(ask(quiet, "recipients", forged) == .notFound, "nothing else would refuse it")
            let signed = try #require((quiet.checks["batv"] as? BATVCheck)?.signedSender("alice@example.org"))
            #expect(ask(quiet, "recipients", signed) == .ok(signed))
            #expect(ask(quiet, "batv-strip", signed) == .ok("alice@example.org"))
            #expect(ask(quiet, "batv-strip", forged) == .notFound)
        }
        #expect(ask(enforcing, "recipients", "alice@example.org") == .ok("alice@example.org"))
        #expect(ask(enforcing, "batv-sign", "alice@example.org") != .notFound)
    }
}
