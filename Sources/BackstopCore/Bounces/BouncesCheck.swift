// The "bounces" check: refuses null-sender mail (MAIL FROM:<>) that cannot be a genuine
// bounce. A delivery status notification goes to exactly one address, the envelope sender
// of the message it reports on, so a null-sender message with more than one recipient is
// backscatter or spam (checked at DATA or END-OF-MESSAGE, where Postfix sends
// recipient_count). Addresses listed as no_reply_addresses never send mail, so they can
// never receive a genuine bounce (checked at RCPT). Mail with a sender is never judged here.

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

    /// no_reply_addresses are checked at RCPT, the recipient count at DATA or END-OF-MESSAGE.
    public func unreachable(in configuration: Configuration) -> [(key: String, message: String)] {
        var out: [(key: String, message: String)] = []
        if !noReplyAddresses.isEmpty && !configuration.policy.runs("bounces", at: .rcpt) {
            out.append(("no_reply_addresses", "checked at RCPT, but policy.rcpt does not list bounces: they never apply"))
        }
        if !configuration.policy.runs("bounces", at: .data) && !configuration.policy.runs("bounces", at: .endOfMessage) {
            out.append(("action", "a bounce's recipients are counted at DATA or END-OF-MESSAGE, but neither policy.data nor policy.end_of_message lists bounces: it never applies"))
        }
        return out
    }

    public func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        BouncesCheck(settings: self)
    }
}

public struct BouncesCheck: Check {
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
        case .rcpt:
            if settings.noReplyAddresses.contains(request.recipient) {
                return .now(Verdict(settings.noReplyAction, reason: "bounce_to_no_reply_address"))
            }
            return .now(.noOpinion())
        case .data, .endOfMessage:
            let count = request.recipientCount
            if count > 1 {
                return .now(Verdict(settings.action, reason: "bounce_recipients=\(count)"))
            }
            return .now(.noOpinion())
        default:
            return .now(.noOpinion())
        }
    }
}
