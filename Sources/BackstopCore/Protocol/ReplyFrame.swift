// How many octets Postfix writes around a refusal's text when it turns a policy answer into
// an SMTP reply (`554 5.7.1 <name>: Recipient address rejected: text`, smtpd_check.c), so
// that ResponseEncoder can cut the text to keep that line within 512 octets. Apart from
// ResponseEncoder.swift because it reads a request, which the table and socketmap fuzzers,
// compiling the encoder alone, do not have. It encodes nothing.

extension ResponseEncoder {
    /// The longest restriction-list class Postfix names in a refusal ("Recipient address").
    static let longestReplyClass = 17
    /// What `client_name[client_address]` may carry besides the two values: the brackets and
    /// a `:port` (smtpd_client_port_logging).
    static let namaddrExtra = 8

    /// The octets Postfix writes around a refusal's text besides its code and status code:
    /// `<name>: Recipient address rejected: `, with the restriction list's name and class.
    /// Which list asked is not in the request, so this is for the longest name it could be:
    /// the recipient, the sender, the HELO name or `client_name[client_address]:port`, and
    /// the longest class.
    public static func refusalFrame(_ request: PolicyRequest) -> Int {
        func octets(_ attribute: Attribute) -> Int { request.withValueBytes(attribute) { $0.count } ?? 0 }
        let name = max(octets(.recipient), octets(.sender), octets(.heloName),
                       octets(.clientName) + octets(.clientAddress) + namaddrExtra)
        // "<" name ">: " class " rejected: "
        return 1 + name + 3 + longestReplyClass + 11
    }

    /// The part after `action=` as sent in answer to `request`: a refusal's text cut for the
    /// reply Postfix makes of it (what the decision log shows too).
    public static func actionText(_ action: PolicyAction, for request: PolicyRequest?) -> String {
        actionText(action, frame: action.isRefusal ? request.map(refusalFrame) ?? 0 : 0)
    }
}
