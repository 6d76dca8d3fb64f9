// One parsed policy request: the raw bytes of its attribute lines plus the positions of
// each attribute, so a value is turned into a String only when a check asks for it.
// Values are bytes and may be invalid UTF-8; accessors decode leniently (U+FFFD).

public struct PolicyRequest: Sendable {
    /// Every attribute line of the request, `name=value\n` after `name=value\n`, and the
    /// empty line that ended it.
    public let storage: [UInt8]
    /// For each known attribute, start and end offset of its value in `storage`, or -1
    /// (`knownSlots` entries). The lines themselves, known or not, are found again in
    /// `storage` only when asked for (`attributes`, `value(named:)`: tests and tools).
    @usableFromInline let known: [Int32]

    /// Entries of the known table.
    static let knownSlots = RequestParser.knownSlots

    init(storage: [UInt8], known: [Int32]) {
        self.storage = storage
        self.known = known
    }

    /// Offsets of every attribute, in arrival order: name start, '=' index, value end. The
    /// lines as the parser read them: up to the empty line, a CR before a newline not part
    /// of the value, the name up to the first "=".
    private var all: [(Int32, Int32, Int32)] {
        var lines: [(Int32, Int32, Int32)] = []
        storage.withUnsafeBytes { raw in
            var start = 0
            while start < raw.count, let newline = raw[start...].firstIndex(of: UInt8(ascii: "\n")) {
                var end = newline
                if end > start, raw[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                guard end > start, let equals = raw[start..<end].firstIndex(of: UInt8(ascii: "=")) else { break }
                lines.append((Int32(start), Int32(equals), Int32(end)))
                start = newline + 1
            }
        }
        return lines
    }

    /// Builds a request from attribute pairs, for tests and the `query` command.
    public init(_ pairs: [(String, String)]) {
        var bytes: [UInt8] = []
        for (name, value) in pairs {
            bytes.append(contentsOf: name.utf8)
            bytes.append(UInt8(ascii: "="))
            bytes.append(contentsOf: value.utf8)
            bytes.append(UInt8(ascii: "\n"))
        }
        bytes.append(UInt8(ascii: "\n"))
        var parser = RequestParser(limits: .init(maxLineLength: 1 << 20, maxAttributes: 1 << 16, maxRequestBytes: 1 << 24))
        var result: PolicyRequest?
        _ = try? bytes.withUnsafeBytes { raw in
            try parser.feed(raw, allowMissingRequest: true) { result = $0 }
        }
        self = result!
    }

    public var attributeCount: Int { all.count }

    /// The raw bytes of a known attribute's value, or nil when the request did not carry it.
    @inlinable
    public func withValueBytes<R>(_ attribute: Attribute, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R? {
        let start = Int(known[attribute.rawValue * 2])
        guard start >= 0 else { return nil }
        let end = Int(known[attribute.rawValue * 2 + 1])
        return try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
    }

    public func has(_ attribute: Attribute) -> Bool { known[attribute.rawValue * 2] >= 0 }

    /// True when the request carries the attribute with a value that is not empty (no
    /// String is made to find out).
    public func hasValue(_ attribute: Attribute) -> Bool {
        let index = attribute.rawValue * 2
        return known[index] >= 0 && known[index + 1] > known[index]
    }

    /// The value as a String (invalid UTF-8 replaced by U+FFFD); "" when absent.
    public subscript(_ attribute: Attribute) -> String {
        withValueBytes(attribute) { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// The value of any attribute by name, known or not; the last occurrence wins.
    public func value(named name: String) -> String? {
        let nameBytes = Array(name.utf8)
        var found: String?
        for (nameStart, equals, valueEnd) in all {
            let n = storage[Int(nameStart)..<Int(equals)]
            if n.elementsEqual(nameBytes) {
                found = String(decoding: storage[Int(equals) + 1..<Int(valueEnd)], as: UTF8.self)
            }
        }
        return found
    }

    /// Every attribute in arrival order, decoded leniently.
    public var attributes: [(name: String, value: String)] {
        all.map { (nameStart, equals, valueEnd) in
            (String(decoding: storage[Int(nameStart)..<Int(equals)], as: UTF8.self),
             String(decoding: storage[Int(equals) + 1..<Int(valueEnd)], as: UTF8.self))
        }
    }

    public var protocolState: ProtocolState {
        withValueBytes(.protocolState) { ProtocolState(bytes: $0) } ?? .other
    }

    public var sender: String { self[.sender] }
    public var recipient: String { self[.recipient] }
    public var clientAddress: String { self[.clientAddress] }
    public var instance: String { self[.instance] }
    public var saslUsername: String { self[.saslUsername] }
    public var heloName: String { self[.heloName] }
    public var clientName: String { self[.clientName] }
    public var queueID: String { self[.queueID] }
    public var recipientCount: Int { Int(self[.recipientCount]) ?? 0 }
}
