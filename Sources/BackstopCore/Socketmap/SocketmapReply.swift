// Postfix's socketmap protocol, the reply side: one netstring "STATUS DATA". OK carries the
// value; NOTFOUND carries nothing; TEMP and PERM carry a reason Postfix logs. (The protocol
// also has TIMEOUT; Backstop never needs it, since every map answers from memory.)
// Postfix turns TEMP into 451 4.3.0 and PERM into 451 4.3.5 plus a notice to the
// postmaster, so the maps use them only for real faults, never for "not found".

public enum SocketmapReply: Sendable, Equatable {
    case ok(String)
    case notFound
    case temp(String)
    case perm(String)

    /// The most octets of DATA a reply carries (Postfix reads up to 100,000).
    public static let maxData = 4096

    /// The status word, also the `reply` label of backstop_socketmap_requests_total.
    public var status: String {
        switch self {
        case .ok: "OK"
        case .notFound: "NOTFOUND"
        case .temp: "TEMP"
        case .perm: "PERM"
        }
    }

    /// The whole netstring. DATA is cut to `maxData` octets and control characters become
    /// "?", so nothing a client sent can break the framing or Postfix's log line.
    public var encoded: [UInt8] {
        var data: [UInt8]
        switch self {
        case .ok(let text), .temp(let text), .perm(let text):
            // Cut on a character boundary: Postfix refuses a map value that is not UTF-8.
            data = Array(text.prefix(octets: Self.maxData).utf8)
        case .notFound: data = []
        }
        for i in data.indices where data[i] < 0x20 || data[i] == 0x7F { data[i] = UInt8(ascii: "?") }
        let payload = Array(status.utf8) + [0x20] + data
        return Array(String(payload.count).utf8) + [UInt8(ascii: ":")] + payload + [UInt8(ascii: ",")]
    }
}
