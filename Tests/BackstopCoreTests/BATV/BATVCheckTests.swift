// The batv check and its maps: bounces to signing domains need a valid tag (with the
// reason named when refused), exempt addresses and verify_since's grace, what is and is
// not signed or stripped, the key file's rules (mode, lines, rotation) and a reload that
// keeps the last good keys.

import Foundation
import Logging
import Testing
@testable import BackstopCore

private let today = 20785  // 2026-11-28

private func keyFile(_ text: String, mode: mode_t = 0o600) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("batv-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = dir + "/batv-keys"
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    chmod(path, mode)
    return path
}

private func check(_ section: String = "", keys: String = "1 0123456789abcdef-secret-one\n", day: Int = today) throws -> BATVCheck {
    let path = try keyFile(keys)
    let config = try Configuration.parse("""
        [[listen]]
        address = "127.0.0.1:10034"
        protocol = "socketmap"
        [policy]
        rcpt = ["batv"]
        [batv]
        key_file = "\(path)"
        domains = ["example.org", "bücher.example"]
        \(section)
        """, file: "b.toml")
    let settings = try #require(config.checks["batv"] as? BATVSettings)
    return BATVCheck(settings: settings, keys: try BATVKeyFile.load(settings.keyFile), today: { day })
}

private func rcpt(_ recipient: String, sender: String = "") -> PolicyRequest {
    PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", "192.0.2.1"),
                   ("sender", sender), ("recipient", recipient)])
}

@Suite struct BATVCheckTests {
    @Test func aBounceNeedsAValidTag() throws {
        let batv = try check()
        let signed = try #require(batv.signedSender("alice@example.org"))
        #expect(batv.verdict(for: rcpt(signed)).reason == "batv_valid")
        #expect(batv.verdict(for: rcpt(signed)).isNoOpinion)
        let refused = batv.verdict(for: rcpt("alice@example.org"))
        #expect(refused.reason == "batv_no_tag")
        #expect(refused.action == BATVSettings.defaultAction)
        #expect(batv.verdict(for: rcpt(signed.replacingOccurrences(of: "=alice@", with: "=mallory@"))).reason == "batv_bad_signature")
        #expect(batv.verdict(for: rcpt("prvs=9792000000=alice@example.org")).reason == "batv_unknown_key")
        let old = try #require(BATVTag.sign("alice@example.org", key: batv.keys[0], today: today - 8, lifetimeDays: 7))
        #expect(batv.verdict(for: rcpt(old)).reason == "batv_expired")
        // Addresses that are never signed get their bounces untagged: no refusal for them.
        let long = String(repeating: "a", count: 49) + "@example.org"
        #expect(batv.signedSender(long) == nil && batv.verdict(for: rcpt(long)).reason == "batv_unsignable")
        #expect(batv.signedSender("\"john doe\"@example.org") == nil, "Postfix asks the socketmap with the quoted form")
        #expect(batv.verdict(for: rcpt("john doe@example.org")).reason == "batv_unsignable", "and the policy service with the unquoted one")
    }

    @Test func onlyBouncesToSigningDomainsAreJudged() throws {
        let batv = try check()
        #expect(batv.verdict(for: rcpt("alice@example.org", sender: "someone@example.net")).isNoOpinion, "mail with a sender")
        let signed = try #require(batv.signedSender("alice@example.org"))
        #expect(batv.verdict(for: rcpt(signed, sender: "someone@example.net")).reason == "batv_valid")
        #expect(batv.verdict(for: rcpt("prvs=1792000000=alice@example.org", sender: "someone@example.net")).reason == "batv_bad_signature",
                "a forged tag with any sender: nothing would strip it, so it would be relayed and bounce")
        #expect(batv.verdict(for: rcpt("carol@example.net")) == .noOpinion(), "not a signing domain")
        #expect(batv.verdict(for: rcpt("ALICE@EXAMPLE.ORG.")).reason == "batv_no_tag", "domain case and trailing dot")
        #expect(batv.verdict(for: rcpt("anna@xn--bcher-kva.example")).reason == "batv_no_tag")
        #expect(batv.verdict(for: rcpt("anna@bücher.example")).reason == "batv_no_tag", "U-label form of a signing domain")
        // The domain starts after the "@" octet: a combining mark after it is part of the
        // domain (which is then none), not carried to the local part's side.
        #expect(batv.verdict(for: rcpt("anna@\u{301}example.org")) == .noOpinion(), "not a signing domain")
        #expect(batv.signedSender("anna@\u{301}example.org") == nil)
    }

    @Test func exemptAddressesAndTheGraceDateLetBouncesIn() throws {
        let batv = try check(#"exempt = ["postmaster", "billing@example.org", "@bücher.example"]"# + "\nverify_since = \"2026-12-05\"")
        #expect(batv.verdict(for: rcpt("Postmaster@example.org")).reason == "batv_exempt")
        #expect(batv.verdict(for: rcpt("billing@example.org")).reason == "batv_exempt")
        #expect(batv.verdict(for: rcpt("prvs=1792000000=postmaster@example.org")).reason == "batv_bad_signature",
                "exempt is for the untagged address; a forged tag on it is still forged")
        #expect(batv.verdict(for: rcpt("anna@xn--bcher-kva.example")).reason == "batv_exempt")
        #expect(batv.verdict(for: rcpt("alice@example.org")).reason == "batv_grace_no_tag", "before verify_since")
        #expect(batv.verdict(for: rcpt("prvs=1792000000=alice@example.org")).reason == "batv_bad_signature",
                "a forged tag is refused even before verify_since")
        let later = try check("verify_since = \"2026-12-05\"", day: 20792)
        #expect(later.verdict(for: rcpt("alice@example.org")).reason == "batv_no_tag", "from verify_since on")
        #expect(later.verdict(for: rcpt("abuse@example.org")).reason == "batv_exempt", "the default exemptions")
    }

    @Test func whatIsSigned() throws {
        let batv = try check(#"exclude_senders = ["mailman@example.org", "owner-list"]"#)
        #expect(batv.signedSender("alice@example.org")?.hasPrefix("prvs=1792") == true)
        #expect(batv.signedSender("carol@example.net") == nil, "other domains")
        #expect(batv.signedSender("mailman@example.org") == nil, "excluded")
        #expect(batv.signedSender("owner-list@example.org") == nil, "excluded by local part")
        #expect(batv.verdict(for: rcpt("mailman@example.org")).reason == "batv_exempt", "never signed, so its bounces are untagged")
        #expect(batv.signedSender(batv.signedSender("alice@example.org")!) == nil, "never twice (Postfix looks the answer up again)")
        #expect(batv.signedSender("prvs=junk=alice@example.org") == nil, "a prvs= address of any form")
        #expect(batv.signedSender("alice") == nil)
        #expect(batv.signedSender("@example.org") == nil)
    }

    @Test func theNewestKeySignsAndEveryKeyVerifies() throws {
        let batv = try check(keys: "1 0123456789abcdef-secret-one\n# rotated in:\n2 second-secret-key-for-rotation\n")
        let signed = try #require(batv.signedSender("alice@example.org"))
        #expect(signed.hasPrefix("prvs=2"))
        let byOldKey = try #require(BATVTag.sign("alice@example.org", key: batv.keys[0], today: today, lifetimeDays: 7))
        #expect(batv.verification(of: byOldKey) == .valid(keyNumber: 1, daysLeft: 7))
    }

    @Test func stripOnlyValidTagsOfKnownRecipients() throws {
        let batv = try check()
        let signed = try #require(batv.signedSender("alice@example.org"))
        #expect(batv.strippedRecipient(signed) { $0 == "alice@example.org" } == "alice@example.org")
        #expect(batv.strippedRecipient(signed) { _ in false } == nil, "a tag on a mailbox that does not exist")
        #expect(batv.strippedRecipient("prvs=1792000000=alice@example.org") { _ in true } == nil, "bad signature")
        #expect(batv.strippedRecipient("alice@example.org") { _ in true } == nil, "no tag")
    }

    /// The age of a tag is judged at RCPT: a message accepted on its tag's last day that
    /// cleanup unwraps after midnight (an after-queue filter's backlog), or Postfix's own
    /// bounce of a message that waited in its queue, is still unwrapped. A tag that is not
    /// ours is not.
    @Test func anExpiredTagOfOursIsStillUnwrapped() throws {
        let yesterday = try check(day: today - 8)
        let signed = try #require(yesterday.signedSender("alice@example.org"))
        let batv = try check()
        #expect(batv.verification(of: signed) == .expired)
        #expect(batv.strippedRecipient(signed) { $0 == "alice@example.org" } == "alice@example.org")
        #expect(try check(keys: "1 another-secret-altogether-123\n").strippedRecipient(signed) { _ in true } == nil, "another key")
        // Seven days after its expiry still; not eight, nor a tag harvested a year ago.
        let lastWeek = try #require(try check(day: today - 14).signedSender("alice@example.org"))
        #expect(batv.strippedRecipient(lastWeek) { _ in true } == "alice@example.org")
        let older = try #require(try check(day: today - 15).signedSender("alice@example.org"))
        #expect(batv.strippedRecipient(older) { _ in true } == nil)
        let harvested = try #require(try check(day: today - 400).signedSender("alice@example.org"))
        #expect(batv.strippedRecipient(harvested) { _ in true } == nil)
        #expect(batv.strippedRecipient(signed) { _ in false } == nil, "a tag on a mailbox that does not exist")
    }

    @Test func theKeyFileIsCheckedLineByLine() throws {
        let good = try BATVKeyFile.parse(Array("# comment\n\n3 sixteen-chars-ok\n0 another-secret-here\n".utf8), file: "k")
        #expect(good.map(\.number) == [3, 0])
        #expect(good[0].secret == Array("sixteen-chars-ok".utf8))
        // Octets that are not UTF-8 are the secret as written, not replaced (two such secrets
        // would otherwise be one key, and another signer reading the file another).
        let raw: [UInt8] = Array("1 ".utf8) + [0xFF, 0xFE] + Array("-fourteen-more".utf8) + [0x0A]
        #expect(try BATVKeyFile.parse(raw, file: "k")[0].secret == [0xFF, 0xFE] + Array("-fourteen-more".utf8))
        func problems(_ text: String) -> [String] {
            do { _ = try BATVKeyFile.parse(Array(text.utf8), file: "k"); return [] } catch { return error.issues.map(\.description) }
        }
        #expect(problems("1 short\n") == ["k:1: key 1: the secret must be 16 to 1024 octets (make one with: head -c 24 /dev/urandom | base64)"])
        #expect(problems("12 sixteen-chars-ok\n").first?.hasPrefix("k:1: a key line is a key number 0-9") == true)
        #expect(problems("1 sixteen-chars-ok\n1 sixteen-chars-ok2\n") == ["k:2: key 1 is already defined on line 1: each key number once"])
        #expect(problems("1\n").count == 1)
        #expect(problems("1 sixteen-chars-ok\n  2 another-secret-here\n")
                == ["k:1: key 1 continues on an indented line: a secret is one line, and every key line starts at the left margin"])
        #expect(problems("# nothing\n") == ["k: no key: add a line such as \"1 \" followed by 32 random characters"])
    }

    @Test func aKeyFileOthersCanReadIsRefused() throws {
        let path = try keyFile("1 0123456789abcdef-secret-one\n", mode: 0o640)
        do {
            _ = try BATVKeyFile.load(path)
            Issue.record("a group-readable key file was accepted")
        } catch {
            #expect(error.description.contains("mode 640"), "\(error)")
            #expect(error.description.contains("chmod 600"))
        }
        chmod(path, 0o600)
        #expect(try BATVKeyFile.load(path).count == 1)
    }

    @Test func aBrokenKeyEditKeepsTheKeysInForce() throws {
        let batv = try check()
        let before = batv.keys
        try "1 short\n".write(toFile: batv.settings.keyFile, atomically: false, encoding: .utf8)
        let issues = batv.reload()
        #expect(issues.count == 1 && issues[0].line == 1, "\(issues)")
        #expect(batv.keys == before)
        let rebuilt = try batv.settings.makeCheck(CheckBuildContext(logger: .init(label: "t"), previous: batv)) as? BATVCheck
        #expect(rebuilt?.keys == before, "a configuration reload keeps the keys in force too")
        #expect(throws: ConfigError.self, "at start a broken key file is fatal") {
            try batv.settings.makeCheck(CheckBuildContext(logger: .init(label: "t")))
        }
        try "1 0123456789abcdef-secret-one\n5 a-new-key-for-next-month\n".write(toFile: batv.settings.keyFile, atomically: false, encoding: .utf8)
        #expect(batv.reload().isEmpty)
        #expect(batv.keys.last?.number == 5)
    }

    @Test func theSectionIsReadAndChecked() throws {
        func issues(_ section: String, listen: Bool = true) -> [String] {
            let text = (listen ? "[[listen]]\naddress = \"127.0.0.1:10034\"\nprotocol = \"socketmap\"\n" : "")
                + "[policy]\nrcpt = [\"batv\"]\n[batv]\n" + section
            do { _ = try Configuration.parse(text, file: "b.toml"); return [] } catch { return error.issues.map(\.message) }
        }
        #expect(issues("domains = [\"example.org\"]").isEmpty)
        #expect(issues("").first?.contains("list the domains") == true)
        #expect(issues("domains = [\"a@example.org\"]").first?.contains("is not a domain name") == true)
        #expect(issues("domains = [\"example.org\"]\nlifetime = \"36h\"").first?.contains("whole days") == true)
        #expect(issues("domains = [\"example.org\"]\nlifetime = \"60d\"").count == 1)
        #expect(issues("domains = [\"example.org\"]\nverify_since = \"soon\"").first?.contains("YYYY-MM-DD") == true)
        #expect(issues("domains = [\"example.org\"]\naction = \"DUNNO\"").first?.contains("must refuse") == true)
        #expect(issues("domains = [\"example.org\"]\naction = \"DEFER_IF_REJECT 4.7.1 no\"").first?.contains("must refuse") == true,
                "DEFER_IF_REJECT lets the bounce through when nothing after it rejects")
        #expect(issues("domains = [\"example.org\"]\nlifetime = \"60d\"") == ["60d is out of range: use \"1d\" to \"30d\""])
        #expect(issues("domains = [\"example.org\"]\nverify_since = 2026-12-05") == ["write the date in quotes: verify_since = \"YYYY-MM-DD\""])
        #expect(issues("domains = [\"example.org\"]\nexempt = [\"a b\"]").first?.contains("is not an address") == true)
        // Entries are read by octets: "@" plus a combining mark is no bare local part, and
        // two "@" make no address.
        #expect(issues("domains = [\"example.org\"]\nexempt = [\"@\u{301}x.example\"]").first?.contains("is not an address") == true)
        #expect(issues("domains = [\"example.org\"]\nexempt = [\"a@b@example.org\"]").first?.contains("is not an address") == true)
        #expect(issues("domains = [\"example.org\"]\nkey_fiel = \"x\"").count == 1, "unknown keys are errors")

        let noListener = try Configuration.parse("[policy]\nrcpt = [\"batv\"]\n[batv]\ndomains = [\"example.org\"]", file: "b.toml")
        #expect(noListener.warnings.contains { $0.message.contains("no [[listen]] has protocol = \"socketmap\"") })
        #expect(noListener.warnings.contains { $0.message.contains("there is no [recipients] section") })
        let signOnly = try Configuration.parse("[[listen]]\naddress = \"127.0.0.1:10034\"\nprotocol = \"socketmap\"\n[batv]\ndomains = [\"example.org\"]", file: "b.toml")
        #expect(signOnly.warnings.isEmpty, "signing first, verifying later, is the documented roll-out: \(signOnly.warnings)")
        #expect(throws: ConfigError.self) { try Configuration.parse("[[listen]]\naddress = \"127.0.0.1:1\"\nprotocol = \"smtp\"", file: "b.toml") }
        let tableOnly = try Configuration.parse("[[listen]]\naddress = \"127.0.0.1:10034\"\nprotocol = \"socketmap\"\n[recipients]\n", file: "b.toml")
        #expect(tableOnly.warnings.isEmpty, "the recipients map alone is a use: \(tableOnly.warnings)")
    }

    @Test(.enabled(if: geteuid() == 0, "needs root to own a file as another user"))
    func theKeyFileMustBelongToTheServersUser() throws {
        let path = try keyFile("1 0123456789abcdef-secret-one\n")
        let text = "[server]\nuser = \"nobody\"\n[[listen]]\naddress = \"127.0.0.1:10034\"\nprotocol = \"socketmap\"\n[batv]\nkey_file = \"\(path)\"\ndomains = [\"example.org\"]\n"
        do {
            _ = try Configuration.parse(text, file: "b.toml")
            Issue.record("a key file owned by root was accepted for server.user = nobody")
        } catch {
            #expect(error.issues.map(\.message).contains { $0.contains("is owned by uid 0") && $0.contains("chown nobody") }, "\(error)")
        }
        let nobody = try #require(getpwnam("nobody"))
        chown(path, nobody.pointee.pw_uid, nobody.pointee.pw_gid)
        #expect(throws: Never.self) { try Configuration.parse(text, file: "b.toml") }
    }
}
