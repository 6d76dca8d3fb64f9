// The SMTP stage a request was sent from (Postfix's protocol_state), used to choose which
// checks run. Unknown stages are kept as `.other` so a future Postfix does not break us.

public enum ProtocolState: String, CaseIterable, Sendable, Hashable {
    case connect = "CONNECT"
    case ehlo = "EHLO"
    case helo = "HELO"
    case mail = "MAIL"
    case rcpt = "RCPT"
    case data = "DATA"
    case bdat = "BDAT"
    case endOfMessage = "END-OF-MESSAGE"
    case vrfy = "VRFY"
    case etrn = "ETRN"
    case other = "OTHER"

    /// The key used for this stage in the `[policy]` section of the configuration.
    public var configKey: String {
        switch self {
        case .endOfMessage: "end_of_message"
        default: rawValue.lowercased()
        }
    }

    public init(wire: String) {
        self = ProtocolState(rawValue: wire.uppercased()) ?? .other
    }
}
