// Postfix's socketmap protocol, the request side: netstrings "LENGTH:NAME KEY," read
// incrementally from a byte stream, bounded (10,240 octets, at most 5 length digits) before
// a byte of the payload is kept. Knows nothing of NIO (the fuzzer drives it directly) and nothing
// of what a map answers (SocketmapMaps.swift); replies are encoded in SocketmapReply.swift.

/// One lookup: the map's name and the key, as Postfix sent them.
public struct SocketmapRequest: Sendable, Equatable {
    public var map: String
    /// The key as text; octets that are not UTF-8 are replaced (U+FFFD), and `keyIsUTF8` says so.
    public var key: String
    /// False when the key's octets are not UTF-8 (Postfix with smtputf8_enable = no passes
    /// 8-bit addresses as they came): no map answers for such a key, since what it would
    /// return is not the address Postfix asked about.
    public var keyIsUTF8: Bool

    public init(map: String, key: String, keyIsUTF8: Bool = true) {
        self.map = map
        self.key = key
        self.keyIsUTF8 = keyIsUTF8
    }
}

public struct SocketmapParser: Sendable {
    private enum State: Sendable {
        case length(value: Int, digits: Int)
        case payload(remaining: Int)
        case comma
    }

    /// The longest payload accepted (NAME KEY), in octets.
    public let maxLength: Int
    /// Postfix sends keys of up to 10,000 octets (longer ones it treats as not found without
    /// asking), plus the map's name: a request it can send is never refused.
    public static let defaultMaxLength = 10_240
    /// Length digits read before the colon; leading zeros count too.
    static let maxDigits = 5
    private var state = State.length(value: 0, digits: 0)
    private var payload: [UInt8] = []

    public init(maxLength: Int = defaultMaxLength) { self.maxLength = maxLength }

    /// True between requests (no byte of the next one read yet).
    public var isIdle: Bool {
        if case .length(_, 0) = state { return true }
        return false
    }

    /// Consumes `input`, calling `emit` for each complete request; throws at the first
    /// byte that breaks the protocol or a limit (the connection is then closed).
    public mutating func feed(_ input: UnsafeRawBufferPointer, emit: (SocketmapRequest) throws -> Void) throws {
        var i = 0
        while i < input.count {
            switch state {
            case .length(let value, let digits):
                let b = input[i]
                i += 1
                if b >= 0x30 && b <= 0x39 {
                    let next = value * 10 + Int(b - 0x30)
                    if next > maxLength || digits == Self.maxDigits { throw ProtocolError.netstringTooLong(limit: maxLength) }
                    state = .length(value: next, digits: digits + 1)
                } else if b == UInt8(ascii: ":") && digits > 0 {
                    if value == 0 { throw ProtocolError.malformedNetstring("empty request") }
                    payload.removeAll(keepingCapacity: true)
                    payload.reserveCapacity(value)
                    state = .payload(remaining: value)
                } else {
                    throw ProtocolError.malformedNetstring(digits == 0 ? "expected a length" : "expected ':' after the length")
                }
            case .payload(let remaining):
                let take = min(remaining, input.count - i)
                payload.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[i..<(i + take)]))
                i += take
                state = remaining == take ? .comma : .payload(remaining: remaining - take)
            case .comma:
                guard input[i] == UInt8(ascii: ",") else { throw ProtocolError.malformedNetstring("expected ',' after the request") }
                i += 1
                state = .length(value: 0, digits: 0)
                try emit(try request(payload))
            }
        }
    }

    private func request(_ bytes: [UInt8]) throws -> SocketmapRequest {
        guard let space = bytes.firstIndex(of: 0x20), space > 0 else {
            throw ProtocolError.malformedNetstring("expected a map name, a space and a key")
        }
        let keyBytes = bytes[(space + 1)...]
        let key = String(validating: keyBytes, as: UTF8.self)
        return SocketmapRequest(map: String(decoding: bytes[..<space], as: UTF8.self),
                                key: key ?? String(decoding: keyBytes, as: UTF8.self), keyIsUTF8: key != nil)
    }
}
