// One parsed policy request: the raw bytes of its attribute lines plus the positions of
// each known attribute, so a value is turned into a String only when a check asks for it.
// Values are bytes and may be invalid UTF-8; accessors decode leniently (U+FFFD).

public struct PolicyRequest: Sendable {
    /// The request's octets (every attribute line, `name=value\n` after `name=value\n`, and
    /// the empty line that ended it), then the known table: for each known attribute, start
    /// and end offset of its value among the octets, or -1 (`knownSlots` Int32 values, in
    /// the machine's byte order). One buffer: a request is one allocation, and a copy of it
    /// one reference. The lines themselves, known or not, are found again in the octets only
    /// when asked for (`attributes`, `value(named:)`: tests and tools).
    @usableFromInline let bytes: [UInt8]
    /// How many of `bytes` are the request's octets (the table follows them).
    @usableFromInline let octets: Int

    /// Entries of the known table.
    static let knownSlots = RequestParser.knownSlots
    /// Octets of the known table at the end of `bytes`.
    static let tableBytes = knownSlots * MemoryLayout<Int32>.size

    /// `bytes`: the request's octets followed by the known table.
    init(bytes: [UInt8]) {
        self.bytes = bytes
        self.octets = bytes.count - Self.tableBytes
    }

    /// Every attribute line of the request and the empty line that ended it.
    public var storage: ArraySlice<UInt8> { bytes[..<octets] }

    /// Entry `slot` of the known table.
    @inlinable
    func known(_ slot: Int) -> Int32 {
        bytes.withUnsafeBytes { Self.known(slot, in: $0, after: octets) }
    }

    /// Entry `slot` of the table that follows `octets` octets of `raw` (the request's bytes).
    @inlinable
    static func known(_ slot: Int, in raw: UnsafeRawBufferPointer, after octets: Int) -> Int32 {
        raw.loadUnaligned(fromByteOffset: octets + slot * MemoryLayout<Int32>.size, as: Int32.self)
    }

    /// Offsets of every attribute, in arrival order: name start, '=' index, value end. The
    /// lines as the parser read them: up to the empty line, a CR before a newline not part
    /// of the value, the name up to the first "=".
    private var all: [(Int32, Int32, Int32)] {
        var lines: [(Int32, Int32, Int32)] = []
        bytes.withUnsafeBytes { whole in
            let raw = UnsafeRawBufferPointer(rebasing: whole[..<octets])
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
        return try bytes.withUnsafeBytes { raw in
            let start = Int(Self.known(attribute.rawValue * 2, in: raw, after: octets))
            guard start >= 0 else { return nil }
            let end = Int(Self.known(attribute.rawValue * 2 + 1, in: raw, after: octets))
            return try body(UnsafeRawBufferPointer(rebasing: raw[start..<end]))
        }
    }

    public func has(_ attribute: Attribute) -> Bool { known(attribute.rawValue * 2) >= 0 }

    /// True when the request carries the attribute with a value that is not empty (no
    /// String is made to find out).
    public func hasValue(_ attribute: Attribute) -> Bool {
        let index = attribute.rawValue * 2
        let start = known(index)
        return start >= 0 && known(index + 1) > start
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
            let n = bytes[Int(nameStart)..<Int(equals)]
            if n.elementsEqual(nameBytes) {
                found = String(decoding: bytes[Int(equals) + 1..<Int(valueEnd)], as: UTF8.self)
            }
        }
        return found
    }

    /// Every attribute in arrival order, decoded leniently.
    public var attributes: [(name: String, value: String)] {
        all.map { (nameStart, equals, valueEnd) in
            (String(decoding: bytes[Int(nameStart)..<Int(equals)], as: UTF8.self),
             String(decoding: bytes[Int(equals) + 1..<Int(valueEnd)], as: UTF8.self))
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
