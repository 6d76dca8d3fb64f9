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

    private static let wireBytes: [(ProtocolState, [UInt8])] = allCases.map { ($0, Array($0.rawValue.utf8)) }

    /// Matches the exact upper-case spelling without building a String (the hot path).
    public init(bytes: UnsafeRawBufferPointer) {
        // Most requests are RCPT's: four octets compared at once.
        if bytes.count == 4, bytes.loadUnaligned(as: UInt32.self) == UInt32(littleEndian: 0x5450_4352) {
            self = .rcpt
            return
        }
        for (state, name) in Self.wireBytes where name.count == bytes.count {
            if name.withUnsafeBytes({ $0.elementsEqual(bytes) }) { self = state; return }
        }
        self.init(wire: String(decoding: bytes, as: UTF8.self))
    }

    /// The position in `allCases` (a table index; `allCases` itself is built on each use).
    public var index: Int {
        switch self {
        case .connect: 0
        case .ehlo: 1
        case .helo: 2
        case .mail: 3
        case .rcpt: 4
        case .data: 5
        case .bdat: 6
        case .endOfMessage: 7
        case .vrfy: 8
        case .etrn: 9
        case .other: 10
        }
    }

    public init(wire: String) {
        self = ProtocolState(rawValue: wire.uppercased()) ?? .other
    }
}
