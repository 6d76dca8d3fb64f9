// The "bounces" check: refuses null-sender mail (MAIL FROM:<>) that cannot be a genuine
// bounce. A delivery status notification goes to exactly one address, the envelope sender
// of the message it reports on, so a null-sender message with more than one recipient is
// backscatter or spam (checked at DATA or END-OF-MESSAGE, where Postfix sends
// recipient_count). Addresses listed as no_reply_addresses never send mail, so they can
// never receive a genuine bounce; they are refused at DATA or END-OF-MESSAGE too, not at
// RCPT, where a sender-verification callout (MAIL FROM:<>, RCPT TO:<noreply@…>, then QUIT)
// would be refused and the mail those addresses send rejected elsewhere. Mail with a sender
// is never judged here.

public struct BouncesSettings: CheckSettings, Equatable {
    public var testMode = false
    public var failAction: PolicyAction = .dunno
    public var action: PolicyAction = BouncesSettings.defaultAction
    public var noReplyAddresses = AddressList()
    public var noReplyAction: PolicyAction = BouncesSettings.defaultNoReplyAction

    public static let defaultAction = PolicyAction.reply(
        code: 550, enhanced: "5.7.1", text: "A bounce (null sender) must have exactly one recipient")
    public static let defaultNoReplyAction = PolicyAction.reply(
        code: 550, enhanced: "5.7.1", text: "This address sends no mail, so it receives no bounces")

    public init() {}

    public init(reading section: ConfigSection, baseDirectory: String) {
        testMode = section.bool("test_mode", default: testMode)
        failAction = section.action("fail_action", default: failAction)
        action = section.action("action", default: action)
        noReplyAction = section.action("no_reply_action", default: noReplyAction)
        noReplyAddresses = AddressList(reading: section, key: "no_reply_addresses", default: [], localParts: false)
    }

    /// Everything is checked at DATA or END-OF-MESSAGE; at RCPT the check has no opinion.
    public func unreachable(in configuration: Configuration) -> [(key: String, message: String)] {
        var out: [(key: String, message: String)] = []
        if !configuration.policy.runs("bounces", at: .data) && !configuration.policy.runs("bounces", at: .endOfMessage) {
            out.append(("action", "a bounce's recipients are checked at DATA or END-OF-MESSAGE, but neither policy.data nor policy.end_of_message lists bounces: it never applies"))
        }
        if configuration.policy.runs("bounces", at: .rcpt) {
            out.append(("no_reply_addresses", "policy.rcpt lists bounces, which judges nothing at RCPT (no_reply_addresses are checked at DATA or END-OF-MESSAGE, so that callouts pass): remove it from policy.rcpt"))
        }
        return out
    }

    public func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        var settings = self
        settings.noReplyAddresses.delimiters = context.recipientDelimiters
        return BouncesCheck(settings: settings)
    }
}

public final class BouncesCheck: Check {
    public let name = "bounces"
    public let settings: BouncesSettings
    public var testMode: Bool { settings.testMode }
    public let failVerdict: Verdict

    public init(settings: BouncesSettings) {
        self.settings = settings
        self.failVerdict = Verdict(settings.failAction, reason: "bounces_failed")
    }

    public func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        // Only the null sender is judged; an absent sender attribute is not a null sender.
        guard request.withValueBytes(.sender, { $0.isEmpty }) == true else { return .now(.noOpinion()) }
        switch request.protocolState {
        case .data, .endOfMessage:
            let count = request.recipientCount
            if count > 1 {
                return .now(Verdict(settings.action, reason: "bounce_recipients=\(count)"))
            }
            // With one recipient accepted, Postfix names it at these stages too.
            if count == 1, settings.noReplyAddresses.contains(request.recipient) {
                return .now(Verdict(settings.noReplyAction, reason: "bounce_to_no_reply_address"))
            }
            return .now(.noOpinion())
        default:
            return .now(.noOpinion())
        }
    }
}
