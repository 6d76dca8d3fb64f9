// Hard limits on what one client may send, and the protocol errors that breaking them
// (or the protocol's grammar) produces. A protocol error closes only that connection.

public struct ProtocolLimits: Sendable, Equatable {
    /// Longest attribute line in octets, without its newline.
    public var maxLineLength: Int
    /// Most attributes in one request.
    public var maxAttributes: Int
    /// Most octets in one request, all lines and newlines included.
    public var maxRequestBytes: Int

    public init(maxLineLength: Int = 4096, maxAttributes: Int = 100, maxRequestBytes: Int = 32768) {
        self.maxLineLength = maxLineLength
        self.maxAttributes = maxAttributes
        self.maxRequestBytes = maxRequestBytes
    }

    public static let defaults = ProtocolLimits()
}

public enum ProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    case lineTooLong(limit: Int)
    case tooManyAttributes(limit: Int)
    case requestTooLarge(limit: Int)
    case missingEquals(line: Int)
    case emptyName(line: Int)
    case missingRequestAttribute
    case unsupportedRequest(String)
    /// socketmap: a netstring announcing more octets than SocketmapParser takes.
    case netstringTooLong(limit: Int)
    /// socketmap: bytes that are not a netstring "LENGTH:NAME KEY,".
    case malformedNetstring(String)
    /// A client that sent more requests than this ahead of their answers (Postfix sends one
    /// and waits for its answer).
    case tooManyPipelined(limit: Int)

    public var description: String {
        switch self {
        case .lineTooLong(let limit): "attribute line longer than \(limit) octets (protocol.max_line_length)"
        case .tooManyAttributes(let limit): "more than \(limit) attributes in one request (protocol.max_attributes)"
        case .requestTooLarge(let limit): "request larger than \(limit) octets (protocol.max_request_bytes)"
        case .missingEquals(let line): "line \(line) of the request has no '=': expected name=value"
        case .emptyName(let line): "line \(line) of the request has an empty attribute name"
        case .missingRequestAttribute: "request has no request=smtpd_access_policy attribute"
        case .unsupportedRequest(let value): "request=\(LogEscaping.escape(value)) is not smtpd_access_policy"
        case .netstringTooLong(let limit): "socketmap request longer than \(limit) octets"
        case .malformedNetstring(let what): "not a socketmap netstring: \(what)"
        case .tooManyPipelined(let limit): "more than \(limit) requests sent ahead of their answers"
        }
    }
}
