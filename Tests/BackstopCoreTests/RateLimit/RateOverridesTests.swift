// Per-key overrides of a rate-limit rule, with real files: a key's own limit or exemption,
// the most specific network for client addresses, errors named by file and line, an edit
// that takes effect without a restart (polled, and at SIGHUP) and a broken edit that keeps
// the last good overrides.

import Foundation
import Logging
import NIOCore
import NIOEmbedded
import PropertyBased
import Testing
@testable import BackstopCore

@Suite struct RateOverridesTests {
    let logger = Logger(label: "test.overrides")

    func check(_ dir: RecipientTableDirectory, key: String, limit: String = "2/1h", interval: String = "20ms",
               previous: RateLimitCheck? = nil) throws -> RateLimitCheck {
        let config = try Configuration.parse("""
            [policy]
            rcpt = ["ratelimit"]
            [ratelimit]
            overrides_reload_interval = "\(interval)"
            [[ratelimit.rule]]
            name = "r"
            key = "\(key)"
            count = "recipient"
            limit = "\(limit)"
            overrides = "\(dir.file("overrides"))"
            """, file: dir.file("backstop.toml"))
        let settings = try #require(config.checks["ratelimit"] as? RateLimitSettings)
        return try #require(try settings.makeCheck(CheckBuildContext(logger: logger, previous: previous)) as? RateLimitCheck)
    }

    /// How many of `n` requests from this client and SASL user pass.
    func admitted(_ check: RateLimitCheck, _ n: Int, client: String = "192.0.2.10", sasl: String = "", sender: String = "a@example.org",
                  logger: Logger? = nil) -> Int {
        let loop = EmbeddedEventLoop()
        let context = CheckContext(eventLoop: loop, deadline: .now() + .seconds(5), logger: logger ?? self.logger)
        var passed = 0
        for _ in 0..<n {
            let request = PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", client),
                                         ("sender", sender), ("recipient", "b@example.net"), ("sasl_username", sasl)])
            if case .now(let verdict) = check.evaluate(request, context: context), !verdict.action.isRefusal { passed += 1 }
        }
        return passed
    }

    /// A refusal under an override logs the override's limit as its table writes it (it
    /// logged burst/(burst × T): "override 2/8640ms" for "20000/1d burst 2"), also when its
    /// numbers are the rule's own.
    @Test func aRefusalUnderAnOverrideLogsItsLimit() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", "newsletter 20000/1d burst 2\nsame 2/1h\n")
        let check = try check(dir, key: "sasl_username")
        func limits(_ sasl: String) -> [String] {
            let log = MetadataLog()
            var logger = Logger(label: "t") { _ in log }
            logger.logLevel = .notice
            _ = admitted(check, 3, sasl: sasl, logger: logger)
            return log.lines.withLockedValue { $0 }.compactMap { $0["limit"].map { "\($0)" } }
        }
        #expect(limits("newsletter") == ["override 20000/24h"])
        #expect(limits("same") == ["override 2/1h"])
        #expect(limits("anyone") == ["2/1h"])
    }

    @Test func keysGetTheirOwnLimitOrNone() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", """
            # user          limit
            Newsletter      5/1h
            vip             exempt
            slow            1/1h burst 1
            """)
        let check = try check(dir, key: "sasl_username")
        #expect(admitted(check, 10, sasl: "anyone") == 2, "the rule's own limit")
        #expect(admitted(check, 10, sasl: "newsletter") == 5, "its own limit (keys compare without case)")
        #expect(admitted(check, 50, sasl: "VIP") == 50, "exempt")
        #expect(admitted(check, 10, sasl: "slow") == 1)
        check.stop()
    }

    /// A key written twice (in another case, with a root dot, in U-labels and in A-labels)
    /// is one key, and the later entry is the one in force.
    @Test func aKeyWrittenTwiceTakesTheLaterEntry() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", """
            example.org             exempt
            EXAMPLE.org.            5/1h
            Bücher.example          6/1h
            xn--bcher-kva.example.  3/1h
            """)
        let check = try check(dir, key: "sender_domain")
        #expect(admitted(check, 10, sender: "a@example.org") == 5)
        #expect(admitted(check, 10, sender: "b@bücher.example") == 3)
        #expect(check.rules[0].overrides?.table?.count == 2, "keys in force")
        check.stop()
    }

    /// `list` judges each key by the limit in force for it: an override's, when it has one.
    @Test func listJudgesAKeyByItsOverride() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", "bulk  10/2h\n")
        let check = try check(dir, key: "sasl_username")
        #expect(admitted(check, 12, sasl: "bulk") == 10)
        #expect(admitted(check, 3, sasl: "plain") == 2)
        let listed = try await check.list(rule: "r", overOnly: true, limit: 10)
        // bulk is two hours ahead: over its own 10/2h (not "from a larger limit" under 2/1h).
        #expect(listed.contains("key bulk: over the limit: 0 of 10 available; the next one in 12m; all 10 again in 2h"), "\(listed)")
        #expect(listed.contains("key plain: over the limit: 0 of 2 available; the next one in 30m; all 2 again in 1h"), "\(listed)")
        check.stop()
    }

    @Test func theMostSpecificNetworkWins() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", """
            192.0.2.0/24      4/1h
            192.0.2.128/25    exempt
            198.51.100.7      3/1h
            2001:db8::/32     exempt
            """)
        let check = try check(dir, key: "client_address")
        #expect(admitted(check, 10, client: "192.0.2.10") == 4)
        #expect(admitted(check, 10, client: "192.0.2.200") == 10)
        #expect(admitted(check, 10, client: "198.51.100.7") == 3)
        #expect(admitted(check, 10, client: "198.51.100.8") == 2)
        #expect(admitted(check, 10, client: "2001:db8::1") == 10)
        let status = try await check.status(rule: "r", key: "192.0.2.10")
        #expect(status.contains("key 192.0.2.10: override 4 per 1h (burst 4) (\(dir.file("overrides")):1)"), "\(status)")
        #expect(status.contains("over the limit: 0 of 4 available"), "\(status)")
        #expect(try await check.status(rule: "r", key: "192.0.2.200").contains("exempt (\(dir.file("overrides")):2)"))
        check.stop()
    }

    @Test func errorsNameTheFileAndLine() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", "   stray continuation\n192.0.2.1   lots\nnot-an-address  1/1h\n10.0.0.1 1/0s\n10.0.0.2 5/99999999999999d\n")
        do {
            _ = try check(dir, key: "client_address")
            Issue.record("a broken overrides file was accepted")
        } catch let error as ConfigError {
            let text = error.issues.map(\.description)
            #expect(text.count == 5, "\(text)")
            #expect(text.contains { $0.hasPrefix(dir.file("overrides") + ":1") && $0.contains("no entry before it") }, "\(text)")
            #expect(text.contains { $0.hasPrefix(dir.file("overrides") + ":2") && $0.contains("expected \"exempt\" or a limit") }, "\(text)")
            #expect(text.contains { $0.hasPrefix(dir.file("overrides") + ":3") && $0.contains("is not an IP address or network") }, "\(text)")
            #expect(text.contains { $0.hasPrefix(dir.file("overrides") + ":4") }, "\(text)")
            // A duration too large for nanoseconds is a problem of that line, not a trap.
            #expect(text.contains { $0.hasPrefix(dir.file("overrides") + ":5") && $0.contains("expected \"exempt\" or a limit") }, "\(text)")
        }
        // A network narrower than what the rule counts as one client (ipv6_prefix 64 by
        // default): part of one count cannot have a limit of its own.
        let narrow = try RecipientTableDirectory()
        try narrow.write("overrides", "2001:db8:0:1::/64  exempt\n2001:db8::7  5/1h\n")
        #expect {
            _ = try check(narrow, key: "client_address")
        } throws: { error in
            let text = (error as? ConfigError)?.issues.map(\.description) ?? []
            return text.count == 1 && text[0].hasPrefix(narrow.file("overrides") + ":2")
                && text[0].contains("is narrower than one client of this rule (it counts /64 networks as one): write 2001:db8::/64")
        }
        // A combined key cannot have overrides.
        #expect(throws: ConfigError.self) {
            _ = try Configuration.parse("""
                [policy]
                rcpt = ["ratelimit"]
                [[ratelimit.rule]]
                name = "r"
                key = "sasl_username+client_address"
                count = "recipient"
                limit = "2/1h"
                overrides = "x"
                """, file: "t.toml")
        }
    }

    @Test func editsTakeEffectWithoutARestartAndBrokenEditsKeepTheLastGood() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("overrides", "alice 3/1h\n")
        let check = try check(dir, key: "sasl_username")
        #expect(admitted(check, 10, sasl: "alice") == 3)
        // Polled: bob becomes exempt.
        try dir.replace("overrides", "alice 3/1h\nbob exempt\n")
        #expect(await recipientsEventually { self.admitted(check, 1, sasl: "bob") == 1 && self.admitted(check, 1, sasl: "bob") == 1
            && self.admitted(check, 1, sasl: "bob") == 1 })
        // A broken edit: the last good overrides stay (bob exempt), and SIGHUP's reload says why.
        try dir.replace("overrides", "alice 3/1h\nbob whenever\n")
        try await Task.sleep(for: .milliseconds(200))
        let issues = check.reload()
        #expect(issues.count == 1 && issues.first?.line == 2, "\(issues)")
        #expect(admitted(check, 5, sasl: "bob") == 5, "still exempt")
        // Mended: a configuration reload keeps the watched table and its counters.
        try dir.replace("overrides", "alice 3/1h\nbob exempt\ndave 1/1h\n")
        let next = try self.check(dir, key: "sasl_username", previous: check)
        #expect(next.overridesTables["r"] === check.overridesTables["r"], "the watched table is handed over")
        #expect(next.reload().isEmpty)
        #expect(admitted(next, 5, sasl: "dave") == 1)
        #expect(admitted(next, 5, sasl: "alice") == 0, "alice used her 3 before the reload")
        check.retire(replacedBy: next)
        next.stop()
    }

    /// The overrides parser with arbitrary text made of the format's own pieces: it never
    /// crashes, every problem names a line, and every entry it keeps can be looked up.
    @Test func arbitraryFilesNeverCrash() async {
        let pieces = ["192.0.2.0/24", "2001:db8::/32", "::ffff:10.0.0.1", "alice", "<>", "exempt", "5/1h", "1/0s", "7/1d",
                      "burst", "9", "#", " ", "\t", "\n", "\r\n", "\"", "/", "999999999999999999999/1s", "5/99999999999999d", "1/1e300s", "\u{0}", "é", "1k/1m"]
        await propertyCheck(count: 500, input: Gen<String?>.element(of: pieces).map { $0 ?? "" }.array(of: 0...60)) { words in
            let bytes = Array(words.joined().utf8)
            for spec in [RateKeySpec(parts: [.clientAddress], ipv4Prefix: 24), RateKeySpec(parts: [.saslUsername])] {
                let (table, issues) = RateOverrides.parse(bytes, file: "f", spec: spec)
                #expect(table.count <= RateOverrides.maxEntries)
                #expect(issues.allSatisfy { ($0.line ?? 0) >= 1 })
                for key in ["192.0.2.1", "2001:db8::1", "alice"] {
                    if case .success(let built) = spec.build(values: [key]) { _ = table.lookup(key: built, client: IPAddress(key)) }
                }
            }
        }
    }
}
