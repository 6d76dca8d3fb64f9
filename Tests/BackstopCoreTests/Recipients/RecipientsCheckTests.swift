// The recipients check as Postfix sees it: configuration section, verdicts through the
// engine, the answer for an unknown user, overrides, and the lookup report for the CLI.

import Foundation
import Logging
import NIOCore
import Testing
@testable import BackstopCore
import BackstopSPF

@Suite struct RecipientsCheckTests {
    let logger = Logger(label: "test.recipients")

    func configuration(_ dir: RecipientTableDirectory, _ section: String) throws -> Configuration {
        let text = """
            [policy]
            rcpt = ["recipients"]

            [recipients]
            \(section)
            """
        let path = try dir.write("backstop.toml", text)
        return try Configuration.load(path: path)
    }

    @Test func unknownRecipientGets550UserUnknown() throws {
        let dir = try RecipientTableDirectory()
        // Tabs as well as spaces between a key, its answer's word and the text (postmap reads both).
        try dir.write("recipients", "alice@example.com OK\ngone@example.com REJECT 5.1.6 {recipient} has left\n"
                      + "tab@example.com\tREJECT\tMailbox closed\n@closed.example REJECT 5.1.6 {recipient}: this domain is closed\n")
        let config = try configuration(dir, "reload_interval = \"0s\"")
        let check = try #require(try config.checks["recipients"]?.makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)

        let unknown = check.verdict(for: recipientRequest("Nobody@Example.com"))
        #expect(unknown.reason == "unknown_recipient")
        #expect(unknown.action == .reply(code: 550, enhanced: "5.1.1", text: "User unknown"))
        #expect(ResponseEncoder.actionText(unknown.action) == "550 5.1.1 User unknown")

        #expect(check.verdict(for: recipientRequest("alice@example.com")) == .noOpinion("known_recipient"))
        #expect(check.verdict(for: recipientRequest("alice@example.org")) == .noOpinion("not_our_domain"))
        #expect(check.verdict(for: recipientRequest("")) == .noOpinion("no_recipient"))
        let gone = check.verdict(for: recipientRequest("gone@example.com"))
        #expect(gone == Verdict(.reject("5.1.6 gone@example.com has left"), reason: "recipient_override"))
        #expect(check.verdict(for: recipientRequest("tab@example.com")) == Verdict(.reject("Mailbox closed"), reason: "recipient_override"))
        // A catch-all with an answer of its own gives it for every address of its domain.
        #expect(check.verdict(for: recipientRequest("anyone@closed.example"))
                == Verdict(.reject("5.1.6 anyone@closed.example: this domain is closed"), reason: "recipient_override"))
    }

    /// RFC 5321 §4.5.1: postmaster@ a domain we receive mail for must be accepted. A table
    /// that did not list it refused it 550 (Postfix itself accepts it for its local domains);
    /// an entry of its own still answers.
    @Test func anUnlistedPostmasterIsAccepted() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\npostmaster@example.org REJECT 5.7.1 write to abuse@ instead\n@example.org OK\n")
        let config = try configuration(dir, "reload_interval = \"0s\"")
        let check = try #require(try config.checks["recipients"]?.makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)
        #expect(check.verdict(for: recipientRequest("postmaster@example.com")) == .noOpinion("postmaster"))
        #expect(check.verdict(for: recipientRequest("PostMaster@Example.com")) == .noOpinion("postmaster"))
        #expect(check.mapAnswer(for: "postmaster@example.com") == .known)
        #expect(check.verdict(for: recipientRequest("postmasters@example.com")).reason == "unknown_recipient")
        #expect(check.verdict(for: recipientRequest("xpostmaster@example.com")).reason == "unknown_recipient")
        #expect(check.verdict(for: recipientRequest("postmaster@example.org")).reason == "recipient_override")
        // backstop lookup says the same.
        let settings = try #require(config.checks["recipients"] as? RecipientsSettings)
        let report = RecipientLookupReport.describe(address: "postmaster@example.com", table: try settings.source.load(), settings: settings)
        #expect(report.exitStatus == 0 && report.answer == .dunno && report.text.contains("accepted: postmaster"), "\(report.text)")
    }

    /// A bounce of forwarded mail comes back to an SRS address, which postsrsd decodes in
    /// Postfix's recipient_canonical_maps: with pass_srs Backstop leaves it to them (it
    /// answered 550); without it, such an address is an unknown recipient as before.
    @Test func srsAddressesPassWithPassSRS() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let srs = "SRS0=HHH=TT=other.org=bob@example.com"
        for (setting, expected) in [("pass_srs = true", "srs_address"), ("", "unknown_recipient")] {
            let config = try configuration(dir, "reload_interval = \"0s\"\n" + setting)
            let check = try #require(try config.checks["recipients"]?.makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)
            #expect(check.verdict(for: recipientRequest(srs)).reason == expected, "\(setting)")
            #expect(check.verdict(for: recipientRequest("srs1=xyz=abc=SRS0=HHH=TT=other.org=bob@example.com")).reason == expected)
            #expect(check.verdict(for: recipientRequest("SRS2=x@example.com")).reason == "unknown_recipient")
            #expect(check.verdict(for: recipientRequest("srs0x@example.com")).reason == "unknown_recipient")
            // backstop lookup says what the check does.
            let settings = try #require(config.checks["recipients"] as? RecipientsSettings)
            let report = RecipientLookupReport.describe(address: srs, table: try settings.source.load(), settings: settings)
            #expect((report.exitStatus == 0) == (expected == "srs_address"), "\(report.text)")
        }
    }

    @Test func settingsAreReadAndChecked() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let config = try configuration(dir, """
            tables = ["recipients"]
            domains = ["example.net"]
            recipient_delimiter = "+-"
            case_sensitive_local_part = false
            strip_batv = true
            reject_action = "550 5.1.1 Sorry, no mailbox here by that name"
            reload_interval = "250ms"
            start_without_table = false
            test_mode = true
            fail_action = "DEFER_IF_PERMIT 4.3.0 try later"
            """)
        let settings = try #require(config.checks["recipients"] as? RecipientsSettings)
        #expect(settings.source.files == [dir.file("recipients")])
        #expect(settings.source.domains == ["example.net"])
        #expect(settings.rules.recipientDelimiters == Array("+-".utf8))
        #expect(settings.reloadInterval == .milliseconds(250))
        #expect(settings.testMode)
        #expect(settings.failAction == .deferIfPermit("4.3.0 try later"))
        let check = try #require(try settings.makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)
        #expect(check.verdict(for: recipientRequest("alice-x@example.com")) == .noOpinion("known_recipient"))
        #expect(check.verdict(for: recipientRequest("bob@example.net")).action == .reply(code: 550, enhanced: "5.1.1", text: "Sorry, no mailbox here by that name"))
    }

    @Test func badSettingsAreReportedWithTheirKeys() throws {
        let dir = try RecipientTableDirectory()
        #expect {
            _ = try configuration(dir, """
                tables = []
                domains = ["user@example.com"]
                recipient_delimiter = "@"
                reject_action = "DUNNO"
                reload_interval = "1ms"
                tabels = ["typo"]
                """)
        } throws: { error in
            let text = "\(error)"
            return ["recipients.tables", "recipients.domains", "recipients.recipient_delimiter", "recipients.reject_action",
                    "recipients.reload_interval", "recipients.tabels"].allSatisfy { text.contains($0) }
        }
    }

    /// A file's index is kept in 16 bits: 65,537 names once trapped while the table was built.
    @Test func tooManyTableFilesAreAConfigurationError() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let names = Array(repeating: "\"recipients\"", count: RecipientsSettings.maxTables + 1).joined(separator: ", ")
        #expect {
            _ = try configuration(dir, "tables = [\(names)]")
        } throws: { error in
            "\(error)".contains("recipients.tables: \(RecipientsSettings.maxTables + 1) files: at most \(RecipientsSettings.maxTables)")
        }
        let most = Array(repeating: "\"recipients\"", count: RecipientsSettings.maxTables).joined(separator: ", ")
        _ = try configuration(dir, "tables = [\(most)]")
    }

    @Test func testModeIsTheChecksOwn() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let config = try configuration(dir, "test_mode = true\nreload_interval = \"0s\"")
        let engine = try EngineBuilder.build(config, previous: nil, logger: logger)
        let check = try #require(engine.checks["recipients"] as? RecipientsCheck)
        #expect(check.testMode)
        // The engine turns the refusal into WARN; the verdict itself stays the refusal.
        #expect(check.verdict(for: recipientRequest("bob@example.com")).reason == "unknown_recipient")
    }

    @Test func lookupReportForTheCLI() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.write("recipients", "# staff\nalice@example.com OK\n@catchall.example OK\ngone@example.com REJECT left\n")
        let config = try configuration(dir, "recipient_delimiter = \"+\"")

        let valid = try RecipientLookupReport.lookup(address: "Alice+news@example.com", configPath: config.file, tablePath: nil)
        #expect(valid.text == "Alice+news@example.com: valid (\(table):2, key alice@example.com, looked up as alice+news@example.com)")
        #expect(valid.exitStatus == 0)

        let unknown = try RecipientLookupReport.lookup(address: "bob@example.com", configPath: nil, tablePath: table)
        #expect(unknown.text == "bob@example.com: unknown (our domain, no entry; answer: 550 5.1.1 User unknown)")
        #expect(unknown.exitStatus == 1)

        let foreign = try RecipientLookupReport.lookup(address: "bob@example.org", configPath: nil, tablePath: table)
        #expect(foreign.text == "bob@example.org: not our domain (no opinion)")
        #expect(foreign.exitStatus == 2)

        let gone = try RecipientLookupReport.lookup(address: "gone@example.com", configPath: nil, tablePath: table)
        #expect(gone.result == .override(.reject("left"), file: table, line: 4))
        #expect(gone.text.contains("REJECT left"))

        let catchAll = try RecipientLookupReport.lookup(address: "x@catchall.example", configPath: nil, tablePath: table)
        #expect(catchAll.text.hasPrefix("x@catchall.example: valid (\(table):3, key @catchall.example"))

        #expect(throws: ConfigError.self) {
            try RecipientLookupReport.lookup(address: "a@b", configPath: nil, tablePath: dir.file("missing"))
        }
    }
}

/// The shipped examples must load and say what their comments claim.
@Suite struct RecipientsExampleTests {
    static let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("examples").path

    @Test func exampleTableLoads() throws {
        let path = Self.examples + "/recipients"
        let table = try RecipientTableSource(files: [path]).load()
        let rules = RecipientNormalisation(recipientDelimiter: "+")
        #expect(table.lookup("Alice+news@Example.com", rules: rules) == .valid(file: path, line: 18))
        #expect(table.lookup("john doe@example.com", rules: rules) == .valid(file: path, line: 21))
        #expect(table.lookup("JÖRG.MÜLLER@example.com", rules: rules) == .valid(file: path, line: 22))
        #expect(table.lookup("office@xn--bcher-kva.example", rules: rules) == .valid(file: path, line: 43))
        #expect(table.lookup("anyone@example.org", rules: rules) == .valid(file: path, line: 46))
        #expect(table.lookup("nobody@example.com", rules: rules) == .unknown)
        #expect(table.lookup("someone@example.edu", rules: rules) == .notOurDomain)
        #expect(table.lookup("dave@example.com", rules: rules) == .override(
            .reply(code: 550, enhanced: "5.1.6", text: "<{recipient}>: Dave has left Example Ltd; please write to sales@example.com instead"),
            file: path, line: 34))
        #expect(table.lookup("frank@example.com", rules: rules) == .override(
            .deferTemporarily("4.2.1 Mailbox is being moved, try again in a few hours"), file: path, line: 39))
    }

    @Test func exampleConfigurationReadsTheRecipientsSection() throws {
        SPFSettings.register()  // the example runs every check
        let config = try Configuration.load(path: Self.examples + "/backstop.toml")
        let settings = try #require(config.checks["recipients"] as? RecipientsSettings)
        #expect(settings.source.files == [Self.examples + "/recipients"])
        try settings.validateTables()
    }
}
