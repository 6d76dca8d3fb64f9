// Reading the configuration: defaults, every error reported with file:line:key, unknown
// keys refused, and the shipped example valid.

import Testing
import Foundation
import NIOCore
@testable import BackstopCore

@Suite struct ConfigurationTests {
    @Test func emptyFileGivesDefaults() throws {
        let config = try Configuration.parse("", file: "x.toml")
        #expect(config.listeners == [.defaultTCP])
        #expect(config.server.idleTimeout == .seconds(330))
        #expect(config.limits == .defaults)
        #expect(config.policy.deadline == .seconds(5))
    }

    /// server.threads = 0: one event loop per two cores, at least one; a number is taken as it is.
    @Test func eventLoopsByDefaultAreOnePerTwoCores() throws {
        #expect(try Configuration.parse("", file: "t.toml").server.threads == 0)
        #expect(ServerSettings.eventLoops(threads: 0, cores: 1) == 1)
        #expect(ServerSettings.eventLoops(threads: 0, cores: 2) == 1)
        #expect(ServerSettings.eventLoops(threads: 0, cores: 3) == 1)
        #expect(ServerSettings.eventLoops(threads: 0, cores: 8) == 4)
        #expect(ServerSettings.eventLoops(threads: 3, cores: 2) == 3)
    }

    @Test func readsEverySection() throws {
        let text = """
        [[listen]]
        address = "[::1]:10040"
        allow = ["::1/128"]
        [[listen]]
        address = "unix:/run/backstop.sock"
        mode = "0600"
        [server]
        max_connections = 50
        idle_timeout = "10m"
        read_timeout = "2s"
        [protocol]
        max_line_length = 1000
        [log]
        level = "debug"
        [policy]
        test_mode = true
        deadline = "1500ms"
        """
        let config = try Configuration.parse(text, file: "x.toml")
        #expect(config.listeners.count == 2)
        #expect(config.listeners[0].endpoint == .tcp(host: "::1", port: 10040))
        #expect(config.listeners[1].endpoint == .unix(path: "/run/backstop.sock"))
        #expect(config.listeners[1].mode == 0o600)
        #expect(config.server.maxConnections == 50)
        #expect(config.server.idleTimeout == .minutes(10))
        #expect(config.server.readTimeout == .seconds(2))
        #expect(config.limits.maxLineLength == 1000)
        #expect(config.log.level == "debug")
        #expect(config.policy.testMode)
        #expect(config.policy.deadline == .milliseconds(1500))
    }

    /// Users and groups the server would switch to or give its socket to must exist:
    /// check-config said the file was good, and `serve` then stopped with exit 77 or 71.
    @Test func usersAndGroupsMustExist() throws {
        let good = "[server]\nuser = \"nobody\"\ngroup = \"nogroup\"\n[[listen]]\naddress = \"unix:/tmp/x.sock\"\nowner = \"daemon\"\ngroup = \"daemon\"\n"
        #expect(try Configuration.parse(good, file: "good.toml").server.user == "nobody")
        for (bad, key) in [("[server]\nuser = \"backstop-no-such-user\"\n", "server.user"),
                           ("[server]\ngroup = \"backstop-no-such-group\"\n", "server.group"),
                           ("[[listen]]\naddress = \"unix:/tmp/x.sock\"\nowner = \"backstop-no-such-user\"\n", "owner"),
                           ("[[listen]]\naddress = \"unix:/tmp/x.sock\"\ngroup = \"backstop-no-such-group\"\n", "group")] {
            #expect {
                try Configuration.parse(bad, file: "bad.toml")
            } throws: { error in
                "\(error)".contains(key) && "\(error)".contains("no such")
            }
        }
    }

    /// A socket file's settings on a TCP listener protect nothing: refused, as allow is on a
    /// Unix socket (they were accepted silently).
    @Test func socketFileSettingsOnATCPListenerAreRefused() throws {
        for key in ["mode = \"0600\"", "owner = \"daemon\"", "group = \"daemon\""] {
            #expect {
                try Configuration.parse("[[listen]]\naddress = \"127.0.0.1:10033\"\n\(key)\n", file: "l.toml")
            } throws: { error in "\(error)".contains("only applies to Unix sockets") }
        }
        _ = try Configuration.parse("[[listen]]\naddress = \"unix:/tmp/x.sock\"\nmode = \"0600\"\nowner = \"daemon\"\n", file: "l.toml")
    }

    @Test func everyErrorIsReportedWithFileLineAndKey() {
        let text = """
        [server]
        max_conections = 5
        idle_timeout = "forever"

        [log]
        level = "loud"

        [policy]
        rcpt = ["nonsense"]
        deadline = 100

        [[listen]]
        address = "localhost"
        """
        do {
            _ = try Configuration.parse(text, file: "/etc/backstop/backstop.toml")
            Issue.record("expected errors")
        } catch {
            let lines = error.issues.map(\.description)
            #expect(lines.contains("/etc/backstop/backstop.toml:2: server.max_conections: unknown key (check the spelling; see docs/configuration.md)"))
            #expect(lines.contains { $0.hasPrefix("/etc/backstop/backstop.toml:3: server.idle_timeout: expected a duration") })
            #expect(lines.contains { $0.hasPrefix("/etc/backstop/backstop.toml:6: log.level: unknown level \"loud\"") })
            #expect(lines.contains { $0.hasPrefix("/etc/backstop/backstop.toml:9: policy.rcpt: unknown check \"nonsense\"") })
            #expect(lines.contains { $0.hasPrefix("/etc/backstop/backstop.toml:10: policy.deadline: 100s is out of range") })
            #expect(lines.contains { $0.hasPrefix("/etc/backstop/backstop.toml:13: listen.0.address:") })
            #expect(error.issues.count == 6)
        }
    }

    /// Lines are named whatever the file's line ends, and a byte that is no text stops it.
    @Test func crlfBomNulAndBytesThatAreNotUTF8() throws {
        func issues(_ text: String) -> [String] {
            do { _ = try Configuration.parse(text, file: "c.toml"); return [] } catch { return error.issues.map(\.description) }
        }
        #expect(issues("\u{FEFF}[server]\r\nmax_conections = 5\r\n").first?.hasPrefix("c.toml:2: server.max_conections: unknown key") == true,
                "\(issues("\u{FEFF}[server]\r\nmax_conections = 5\r\n"))")
        #expect(issues("# first\r\n[server]\r\nmax_conections = 5\r\n").first?.hasPrefix("c.toml:3: server.max_conections") == true)
        // Everything after a NUL would have been dropped by the TOML parser, [policy] and all.
        #expect(issues("[server]\nmax_connections = 5\n\0\n[policy]\nrcpt = [\"nonsense\"]\n") == ["c.toml:3: a NUL byte: a configuration is text"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-config-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/latin1.toml"
        try Data(Array("[server]\n# caf".utf8) + [0xE9] + Array("\nthreads = 1\n".utf8)).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Configuration.load(path: path)
            Issue.record("a file that is not UTF-8 was read")
        } catch {
            #expect(error.description == path + ":2: not valid UTF-8: save the file as UTF-8")
        }
    }

    @Test func syntaxErrorNamesTheLine() {
        do {
            _ = try Configuration.parse("[server]\nmax_connections = = 3\n", file: "b.toml")
            Issue.record("expected an error")
        } catch {
            #expect(error.issues.first?.line == 2)
            #expect(error.description.hasPrefix("b.toml:2: TOML syntax error"))
        }
    }

    @Test func wrongTypesAreReported() {
        do {
            _ = try Configuration.parse("[server]\nmax_connections = \"many\"\n[protocol]\nmax_attributes = 3\n", file: "c.toml")
            Issue.record("expected errors")
        } catch {
            #expect(error.issues.map(\.description) == [
                "c.toml:2: server.max_connections: expected an integer, found a string",
                "c.toml:4: protocol.max_attributes: 3 is out of range: use a value from 16 to 10000",
            ])
        }
    }

    @Test func endpoints() {
        #expect(ListenerSettings.parseEndpoint("127.0.0.1:10033") == .tcp(host: "127.0.0.1", port: 10033))
        #expect(ListenerSettings.parseEndpoint("[::1]:1") == .tcp(host: "::1", port: 1))
        #expect(ListenerSettings.parseEndpoint("unix:/a/b") == .unix(path: "/a/b"))
        #expect(ListenerSettings.parseEndpoint("::1:10033") == nil)
        #expect(ListenerSettings.parseEndpoint("unix:relative") == nil)
        #expect(ListenerSettings.parseEndpoint("host:99999") == nil)
    }

    @Test func durations() {
        #expect(BackstopCore.DurationText.parse("250ms") == .milliseconds(250))
        #expect(BackstopCore.DurationText.parse("1.5s") == .milliseconds(1500))
        #expect(BackstopCore.DurationText.parse("2h") == .hours(2))
        #expect(BackstopCore.DurationText.parse("-1s") == nil)
        #expect(BackstopCore.DurationText.parse("soon") == nil)
    }

    /// Numbers too large for nanoseconds in an Int64 are not durations (they trapped before:
    /// a typo in a duration stopped `check-config`, and SIGHUP stopped the server).
    @Test func durationsTooLargeAreRefusedNotTrapped() {
        for text in ["99999999999999d", "9223372036854775807ms", "1e300s", "9.3e18ms", "106752d", "9223372036854775807"] {
            #expect(BackstopCore.DurationText.nanoseconds(text) == nil, "\(text)")
        }
        #expect(BackstopCore.DurationText.nanoseconds("106751d") == Int64(9_223_286_400_000_000_000))
        #expect(BackstopCore.DurationText.nanoseconds("9223372036s") == 9_223_372_036_000_000_000)
        #expect(BackstopCore.DurationText.approximate(nanoseconds: .max).hasSuffix("s"))
        do {
            _ = try Configuration.parse("[server]\nread_timeout = \"99999999999999d\"\nidle_timeout = 9223372036854775807\n", file: "d.toml")
            Issue.record("expected errors")
        } catch {
            #expect(error.issues.map(\.description).sorted() == [
                "d.toml:2: server.read_timeout: expected a duration such as \"500ms\", \"30s\", \"5m\" or \"1h\"",
                "d.toml:3: server.idle_timeout: expected a duration such as \"500ms\", \"30s\", \"5m\" or \"1h\"",
            ])
        }
    }

    @Test func dottedQuadFastPathAgreesWithInetPton() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789.".utf8) + Array("0123456789.:abx ".utf8)
        var samples = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5",
                       "1..2.3", ".1.2.3", "1.2.3.4.", "1.2.3.04", "10.0.0.0", "1.2.3.4 ", "::1", "", "1234.1.1.1"]
        for _ in 0..<5000 {
            samples.append(String(decoding: (0..<Int.random(in: 0...16, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }, as: UTF8.self))
        }
        for text in samples {
            let fast = Array(text.utf8).withUnsafeBytes { IPAddress(dottedQuad: $0) }
            let slow = IPAddress(text)
            if let fast { #expect(fast == slow, "\(text)") }
            if case .v4 = slow, !text.contains(":"), !text.contains("["), !text.contains("%") {
                #expect(fast == slow, "\(text)")
            }
        }
    }

    @Test func cidr() {
        let net = CIDR("192.0.2.0/24")!
        #expect(net.contains(IPAddress("192.0.2.200")!))
        #expect(!net.contains(IPAddress("192.0.3.1")!))
        #expect(net.contains(IPAddress("::ffff:192.0.2.9")!))
        let v6 = CIDR("2001:db8::/32")!
        #expect(v6.contains(IPAddress("2001:db8:1::5")!))
        #expect(!v6.contains(IPAddress("2001:db9::5")!))
        #expect(CIDR("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("nonsense") == nil)
        // IPv4-mapped networks count the mapping's 96 bits: /104 is 10.0.0.0/8, and /8 (which
        // once became 0.0.0.0/0, all of IPv4, in an exemption list) is refused.
        #expect(CIDR("::ffff:10.0.0.0/104") == CIDR("10.0.0.0/8"))
        #expect(CIDR("::ffff:10.0.0.0/8") == nil)
        #expect(CIDR("::ffff:10.0.0.1") == CIDR("10.0.0.1/32"))
        #expect(CIDR("::ffff:10.0.0.0/129") == nil && CIDR("10.0.0.0/+8") == nil)
        #expect(IPAddress("2001:db8::1")!.masked(to: 64).description == "2001:db8::")
        #expect(IPAddress("192.0.2.77")!.masked(to: 24).description == "192.0.2.0")
    }

    @Test func settingsThatNeverTakeEffectAreWarnings() throws {
        let text = """
        [policy]
        rcpt = ["recipients", "bounces"]
        [ratelimit]
        [[ratelimit.rule]]
        name = "per_client"
        key = "client_address"
        count = "recipient"
        limit = "10/1h"
        [bounces]
        no_reply_addresses = ["noreply@example.org"]
        """
        let config = try Configuration.parse(text, file: "t.toml")
        let descriptions = config.warnings.map(\.description)
        #expect(descriptions.contains { $0.contains("bounces.action: a bounce's recipients are checked at DATA or END-OF-MESSAGE") }, "\(descriptions)")
        #expect(descriptions.contains("t.toml:3: ratelimit: [ratelimit] is configured but listed in no [policy] stage, so it never runs"), "\(descriptions)")
        #expect(descriptions.contains { $0.contains("bounces.no_reply_addresses: policy.rcpt lists bounces, which judges nothing at RCPT") }, "\(descriptions)")
        #expect(descriptions.count == 3, "\(descriptions)")
        // Listed at DATA, no_reply_addresses take effect: no warning.
        let atData = try Configuration.parse("[policy]\ndata = [\"bounces\"]\n[bounces]\nno_reply_addresses = [\"noreply@example.org\"]\n", file: "d.toml")
        #expect(atData.warnings.isEmpty, "\(atData.warnings)")
        // Listed at RCPT, a rule for END-OF-MESSAGE is still dead; the example has none of this.
        let rule = try Configuration.parse("""
        [policy]
        rcpt = ["ratelimit"]
        [ratelimit]
        [[ratelimit.rule]]
        name = "messages"
        key = "client_address"
        count = "message"
        limit = "10/1h"
        """, file: "r.toml")
        #expect(rule.warnings.map(\.description) == ["r.toml:4: ratelimit.rule[name=messages]: rule \"messages\" counts at end_of_message, but policy.end_of_message does not list ratelimit: it never counts"])
        // A key on the recipient after RCPT: a message to two recipients has none there.
        let perDomain = try Configuration.parse("""
        [policy]
        rcpt = ["ratelimit"]
        end_of_message = ["ratelimit"]
        [ratelimit]
        [[ratelimit.rule]]
        name = "inbound"
        key = "recipient_domain"
        count = "message"
        limit = "1000/1h"
        [[ratelimit.rule]]
        name = "inbound_rcpt"
        key = "recipient_domain"
        count = "message"
        protocol_state = "RCPT"
        limit = "1000/1h"
        """, file: "p.toml")
        #expect(perDomain.warnings.map(\.description) == ["p.toml:5: ratelimit.rule[name=inbound]: rule \"inbound\" keys on recipient_domain at end_of_message, where Postfix gives the recipient only for a message with exactly one: messages to several recipients are never counted; count it at RCPT (protocol_state = \"RCPT\")"])
    }
}
