// DNS messages on the wire (RFC 1035 §4), only as much as SPF needs: a query for one
// question, and the decoding of its answer, with every length checked before it is used.
// Compression pointers must point backwards, names stay within 255 octets and labels
// within 63, an answer that is not for our ID and question is not ours, and an alias chain
// inside one answer is followed without loops. It opens no socket (DNSResolver does).

/// The record types SPF asks for.
public enum DNSType: UInt16, Sendable, CaseIterable {
    case a = 1, cname = 5, ptr = 12, mx = 15, txt = 16, aaaa = 28
}

public struct DNSQuestion: Hashable, Sendable, CustomStringConvertible {
    public var name: DNSName
    public var type: DNSType

    public init(_ name: DNSName, _ type: DNSType) {
        self.name = name
        self.type = type
    }

    public var description: String { "\(name) \(type)" }
}

public enum DNSStatus: UInt8, Sendable {
    /// NOERROR: records may still be empty (NODATA).
    case success = 0
    /// NXDOMAIN.
    case nameError = 1
    /// SERVFAIL, REFUSED, a malformed answer, an alias loop.
    case serverFailure = 2
    /// No usable answer in time.
    case timeout = 3
}

/// One decoded answer: the records of the asked type at the end of any alias chain.
public struct DNSAnswer: Sendable {
    public var status: DNSStatus
    /// The smallest TTL of the records used (seconds).
    public var ttl: UInt32
    /// A: 4 octets per address, AAAA: 16, in answer order.
    public var addresses: [UInt8] = []
    /// PTR targets (the first `DNSMessage.maxNamesKept`) or MX exchanges sorted by preference.
    public var names: [DNSName] = []
    /// Records of the asked type in the answer, also those not kept in `names`.
    public var recordCount = 0
    /// TXT records, each the concatenation of its character-strings.
    public var texts: [[UInt8]] = []
    /// Set when the answer ends in an alias the server did not follow for us.
    public var alias: DNSName?

    public init(status: DNSStatus, ttl: UInt32 = 0) {
        self.status = status
        self.ttl = ttl
    }
}

public enum DNSMessage {
    /// A UDP answer we accept at most (EDNS0 asks for this much).
    public static let maxUDPPayload = 1232
    /// Compression pointers one name may follow: a name of at most 255 octets has at most
    /// 127 labels, and needs no more pointers than labels.
    static let maxPointers = 127

    /// MX or PTR names kept per answer: RFC 7208 §4.6.4 uses at most 10, one more shows that
    /// an MX answer is over the limit.
    public static let maxNamesKept = 11
    /// Alias hops followed inside one answer.
    public static let maxAliasHops = 16

    /// A query: recursion desired, one question, an EDNS0 OPT record announcing our UDP size.
    public static func query(id: UInt16, _ question: DNSQuestion) -> [UInt8] {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]
        out += question.name.wire
        out += [UInt8(question.type.rawValue >> 8), UInt8(question.type.rawValue & 0xFF), 0, 1]
        // OPT: root name, type 41, class = UDP payload size, TTL 0, no options.
        out += [0, 0, 41, UInt8(maxUDPPayload >> 8), UInt8(maxUDPPayload & 0xFF), 0, 0, 0, 0, 0, 0]
        return out
    }

    public enum Decoded: Sendable {
        case answer(DNSAnswer)
        /// TC set: ask again over TCP.
        case truncated
        /// Not a reply to this query (wrong ID, not a response, another question): ignore it.
        case notOurs
    }

    /// Decodes `bytes` as the reply to query `id` for `question`.
    public static func decode(_ bytes: [UInt8], id: UInt16, question: DNSQuestion) -> Decoded {
        var reader = Reader(bytes: bytes)
        guard let rid = reader.u16(), rid == id, let flags = reader.u16(), flags & 0x8000 != 0,
              let qd = reader.u16(), let an = reader.u16(), let ns = reader.u16(), reader.u16() != nil else { return .notOurs }
        let rcode = flags & 0x000F
        // Some servers answer REFUSED or SERVFAIL without echoing the question.
        if qd == 0 {
            return rcode != 0 && rcode != 3 ? .answer(DNSAnswer(status: .serverFailure)) : .notOurs
        }
        guard qd == 1, let qname = reader.name(), qname == question.name,
              reader.u16() == question.type.rawValue, reader.u16() == 1 else { return .notOurs }
        if flags & 0x0200 != 0 { return .truncated }
        guard rcode == 0 || rcode == 3 else { return .answer(DNSAnswer(status: .serverFailure)) }

        // Read the answer section once; every length is checked against the message. A
        // malformed one is a server failure, except under NXDOMAIN, which says it all.
        let malformed = DNSAnswer(status: rcode == 3 ? .nameError : .serverFailure)
        struct Record { let owner: DNSName; let type: UInt16; let ttl: UInt32; let start: Int; let end: Int }
        var records: [Record] = []
        records.reserveCapacity(min(Int(an), 64))
        for _ in 0..<an {
            guard let owner = reader.name(), let type = reader.u16(), let rclass = reader.u16(),
                  let ttl = reader.u32(), let length = reader.u16() else { return .answer(malformed) }
            let start = reader.offset, end = start + Int(length)
            guard end <= bytes.count else { return .answer(malformed) }
            reader.offset = end
            if rclass == 1 { records.append(Record(owner: owner, type: type, ttl: received(ttl), start: start, end: end)) }
        }
        // How long "no such name" or "no such record" holds (RFC 2308 §5): the SOA of the
        // authority section, its TTL or its MINIMUM, whichever is less; nil without one.
        var negativeTTL: UInt32?
        for _ in 0..<ns where negativeTTL == nil {
            guard reader.name() != nil, let type = reader.u16(), let rclass = reader.u16(),
                  let ttl = reader.u32(), let length = reader.u16(), reader.offset + Int(length) <= bytes.count else { break }
            let end = reader.offset + Int(length)
            if type == 6, rclass == 1 {
                var soa = Reader(bytes: bytes, offset: reader.offset)
                if soa.name() != nil, soa.name() != nil, soa.offset + 20 == end {
                    soa.offset += 16
                    if let minimum = soa.u32() { negativeTTL = min(received(ttl), received(minimum)) }
                }
            }
            reader.offset = end
        }
        if rcode == 3 { return .answer(DNSAnswer(status: .nameError, ttl: negativeTTL ?? 0)) }

        // Follow aliases from the question name.
        var current = question.name
        var ttl = UInt32.max
        var seen: Set<DNSName> = [current]
        var hops = 0
        while question.type != .cname,
              let alias = records.first(where: { $0.type == DNSType.cname.rawValue && $0.owner == current }) {
            var target = Reader(bytes: bytes, offset: alias.start)
            guard let next = target.name(), target.offset == alias.end else { return .answer(DNSAnswer(status: .serverFailure)) }
            hops += 1
            guard hops <= maxAliasHops, seen.insert(next).inserted else {
                return .answer(DNSAnswer(status: .serverFailure))  // an alias loop
            }
            ttl = min(ttl, alias.ttl)
            current = next
        }

        var answer = DNSAnswer(status: .success)
        var mx: [(preference: UInt16, name: DNSName)] = []
        for record in records where record.type == question.type.rawValue && record.owner == current {
            var r = Reader(bytes: bytes, offset: record.start)
            let length = record.end - record.start
            switch question.type {
            case .a, .aaaa:
                guard length == (question.type == .a ? 4 : 16) else { return .answer(DNSAnswer(status: .serverFailure)) }
                answer.addresses += bytes[record.start..<record.end]
            case .ptr, .cname:
                guard let name = r.name(), r.offset == record.end else { return .answer(DNSAnswer(status: .serverFailure)) }
                if answer.names.count < maxNamesKept { answer.names.append(name) }
            case .mx:
                guard let preference = r.u16(), let name = r.name(), r.offset == record.end else {
                    return .answer(DNSAnswer(status: .serverFailure))
                }
                if mx.count < maxNamesKept { mx.append((preference, name)) }
            case .txt:
                var text: [UInt8] = []
                var p = record.start
                while p < record.end {
                    let n = Int(bytes[p])
                    guard p + 1 + n <= record.end else { return .answer(DNSAnswer(status: .serverFailure)) }
                    text += bytes[(p + 1)..<(p + 1 + n)]
                    p += 1 + n
                }
                answer.texts.append(text)
            }
            answer.recordCount += 1
            ttl = min(ttl, record.ttl)
        }
        if !mx.isEmpty {
            answer.names = mx.enumerated().sorted { ($0.element.preference, $0.offset) < ($1.element.preference, $1.offset) }.map(\.element.name)
        }
        // An alias whose end has no record of the type, with an SOA saying so, is an answer;
        // without the SOA the server did not follow it, and the resolver asks for the end.
        if answer.recordCount == 0 && current != question.name && negativeTTL == nil { answer.alias = current }
        if answer.recordCount == 0, let negativeTTL { ttl = min(ttl, negativeTTL) }
        answer.ttl = ttl == .max ? 0 : ttl
        return .answer(answer)
    }

    /// A TTL as received: one with the high bit set counts as zero (RFC 2181 §8).
    static func received(_ ttl: UInt32) -> UInt32 { ttl > 0x7FFF_FFFF ? 0 : ttl }

    /// Bounds-checked reading of big-endian integers and compressed names.
    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        init(bytes: [UInt8], offset: Int = 0) {
            self.bytes = bytes
            self.offset = offset
        }

        mutating func u16() -> UInt16? {
            guard offset + 2 <= bytes.count else { return nil }
            defer { offset += 2 }
            return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        }

        mutating func u32() -> UInt32? {
            guard let hi = u16(), let lo = u16() else { return nil }
            return UInt32(hi) << 16 | UInt32(lo)
        }

        /// A possibly compressed name. Each pointer must point before the label sequence it
        /// was found in, so every jump goes strictly backwards and a loop is impossible; and
        /// one name follows at most `maxPointers` of them, so a chain of thousands of
        /// pointers (each two octets back) costs no more than a real name.
        mutating func name() -> DNSName? {
            var wire: [UInt8] = []
            var p = offset
            var floor = offset          // a pointer must land before this
            var jumped = false
            var pointers = 0
            while true {
                guard p < bytes.count else { return nil }
                let length = Int(bytes[p])
                if length == 0 {
                    if !jumped { offset = p + 1 }
                    wire.append(0)
                    return wire.count <= DNSName.maxWireLength ? DNSName(checkedWire: wire) : nil
                }
                switch length & 0xC0 {
                case 0xC0:
                    guard p + 1 < bytes.count else { return nil }
                    let target = (length & 0x3F) << 8 | Int(bytes[p + 1])
                    pointers += 1
                    guard target < floor, pointers <= DNSMessage.maxPointers else { return nil }
                    if !jumped { offset = p + 2 }
                    jumped = true
                    floor = target
                    p = target
                case 0x00:
                    guard p + 1 + length <= bytes.count else { return nil }
                    wire.append(UInt8(length))
                    wire += bytes[(p + 1)..<(p + 1 + length)]
                    // Room for at least the final zero octet.
                    guard wire.count < DNSName.maxWireLength else { return nil }
                    p += 1 + length
                default:
                    return nil  // 0x40 and 0x80 label types are not in use
                }
            }
        }
    }
}
