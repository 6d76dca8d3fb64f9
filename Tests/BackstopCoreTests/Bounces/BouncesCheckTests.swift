// The bounces check: null-sender mail with several recipients is refused at DATA and
// END-OF-MESSAGE, null-sender mail to no-reply addresses at DATA; mail with a sender and
// genuine bounces pass; the configuration is read and checked.

import Testing
import Logging
import NIOCore
import NIOEmbedded
@testable import BackstopCore

private let logger = Logger(label: "test.bounces")

private func check(_ section: String = "") throws -> BouncesCheck {
    let config = try Configuration.parse("[policy]\ndata = [\"bounces\"]\n[bounces]\n" + section, file: "b.toml")
    let settings = try #require(config.checks["bounces"] as? BouncesSettings)
    return BouncesCheck(settings: settings)
}

private func verdict(_ check: BouncesCheck, _ pairs: [(String, String)]) -> Verdict {
    let context = CheckContext(eventLoop: EmbeddedEventLoop(), deadline: NIODeadline.now() + TimeAmount.seconds(1), logger: logger)
    if case .now(let verdict) = check.evaluate(PolicyRequest(pairs), context: context) { return verdict }
    Issue.record("bounces answers synchronously")
    return .noOpinion()
}

private func request(_ state: String, sender: String = "", recipient: String = "", count: Int = 0) -> [(String, String)] {
    [("request", "smtpd_access_policy"), ("protocol_state", state), ("client_address", "192.0.2.1"),
     ("sender", sender), ("recipient", recipient), ("recipient_count", "\(count)")]
}

@Suite struct BouncesCheckTests {
    @Test func aBounceWithSeveralRecipientsIsRefused() throws {
        let bounces = try check()
        let refused = verdict(bounces, request("DATA", count: 2))
        #expect(refused.action == .reply(code: 550, enhanced: "5.7.1", text: "A bounce (null sender) must have exactly one recipient"))
        #expect(refused.reason == "bounce_recipients=2")
        #expect(verdict(bounces, request("END-OF-MESSAGE", count: 40)).action.isRefusal)
        #expect(verdict(bounces, request("DATA", count: 1)).isNoOpinion, "a genuine bounce has one recipient")
        #expect(verdict(bounces, request("DATA", sender: "a@example.org", count: 50)).isNoOpinion, "mail with a sender")
        #expect(verdict(bounces, request("RCPT", recipient: "x@example.com")).isNoOpinion)
    }

    @Test func anAbsentSenderIsNotANullSender() throws {
        let bounces = try check()
        let pairs: [(String, String)] = [("request", "smtpd_access_policy"), ("protocol_state", "DATA"), ("recipient_count", "5")]
        #expect(verdict(bounces, pairs).isNoOpinion)
    }

    @Test func noReplyAddressesGetNoBounces() throws {
        let bounces = try check("""
            no_reply_addresses = ["NoReply@example.org", "@notifications.example.org"]
            action = "REJECT 5.7.1 Not a bounce"
            """)
        // At RCPT nothing is refused: a sender-verification callout (MAIL FROM:<>, RCPT TO:
        // the no-reply address, QUIT) must pass, or the mail that address sends is rejected
        // by the sites that verify senders.
        #expect(verdict(bounces, request("RCPT", recipient: "noreply@EXAMPLE.org")).isNoOpinion)
        #expect(verdict(bounces, request("RCPT", recipient: "anyone@notifications.example.org")).isNoOpinion)
        // At DATA (and END-OF-MESSAGE), with its one recipient named, the bounce is refused.
        let refused = verdict(bounces, request("DATA", recipient: "noreply@EXAMPLE.org", count: 1))
        #expect(refused.action == .reply(code: 550, enhanced: "5.7.1", text: "This address sends no mail, so it receives no bounces"))
        #expect(refused.reason == "bounce_to_no_reply_address")
        #expect(verdict(bounces, request("END-OF-MESSAGE", recipient: "anyone@notifications.example.org", count: 1)).action.isRefusal)
        #expect(verdict(bounces, request("DATA", recipient: "anyone@example.org", count: 1)).isNoOpinion)
        #expect(verdict(bounces, request("DATA", sender: "a@example.net", recipient: "noreply@example.org", count: 1)).isNoOpinion)
        #expect(verdict(bounces, request("DATA", count: 3)).action == .reject("5.7.1 Not a bounce"))
    }

    /// Postfix delivers noreply+x@ to noreply@ when recipient_delimiter is "+": a bounce to
    /// the extension address passed no_reply_addresses. The check takes the delimiters of
    /// [recipients], as the engine builds it.
    @Test func aNoReplyAddressWithAnExtensionGetsNoBounces() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "noreply@example.org\n")
        let config = try Configuration.parse("""
            [policy]
            rcpt = ["recipients"]
            data = ["bounces"]
            [recipients]
            tables = ["\(dir.file("recipients"))"]
            recipient_delimiter = "+-"
            [bounces]
            no_reply_addresses = ["noreply@example.org"]
            """, file: "b.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: logger)
        let bounces = try #require(engine.checks["bounces"] as? BouncesCheck)
        for recipient in ["noreply+x@example.org", "NoReply-list@example.org", "noreply@example.org"] {
            #expect(verdict(bounces, request("DATA", recipient: recipient, count: 1)).reason == "bounce_to_no_reply_address", "\(recipient)")
        }
        for recipient in ["noreplyx@example.org", "+noreply@example.org", "noreply+x@example.net"] {
            #expect(verdict(bounces, request("DATA", recipient: recipient, count: 1)).isNoOpinion, "\(recipient)")
        }
        // Without [recipients], an address is matched as written.
        let plain = try check("no_reply_addresses = [\"noreply@example.org\"]")
        #expect(verdict(plain,
                        request("DATA", recipient: "noreply+x@example.org", count: 1)).isNoOpinion)
    }

    @Test func badEntriesAreReportedWithTheirLine() {
        do {
            _ = try check("""
                no_reply_addresses = ["not-an-address"]
                action = "BOUNCE"
                """)
            Issue.record("expected errors")
        } catch let error as ConfigError {
            let text = error.description
            #expect(text.contains("b.toml:4: bounces.no_reply_addresses: \"not-an-address\" is not an address"), "\(text)")
            #expect(text.contains("b.toml:5: bounces.action"), "\(text)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func testModeAndFailActionAreRead() throws {
        let bounces = try check("test_mode = true\nfail_action = \"DEFER 4.3.0 try later\"")
        #expect(bounces.testMode)
        #expect(bounces.failVerdict.action == .deferTemporarily("4.3.0 try later"))
    }
}
