// The messages between the server and an SPF worker process, and their binary encoding.
// A frame is a 4-octet big-endian length, then a type octet and the payload. Decoding
// checks every length, count, range and value against a stated bound and refuses trailing
// octets: what a worker sends is hostile (a record may have taken it over), and one
// malformed frame ends that worker. Neither side's logic lives here; it knows no sockets.

#if canImport(BackstopCore)  // the fuzzers compile these files without the package
import BackstopCore
#endif

public enum SPFWire {
    /// Largest frame the server sends (an evaluation with the DNS answers it will need).
    public static let maxToWorker = 512 * 1024
    /// Largest frame a worker may send; a longer one is a protocol error.
    public static let maxFromWorker = 4 * 1024
    /// Bounds on the strings of a worker's result.
    public static let maxMechanism = 256
    public static let maxExplanation = SPFMacro.maxExplanation
    public static let maxProblem = 256
    public static let maxNotice = 512
    /// Longest sender and HELO an evaluation carries (longer ones are not evaluated).
    public static let maxSender = 1_024
    public static let maxHelo = 255
    /// DNS answers in one frame.
    public static let maxAnswers = 512

    /// The bits of a term's second octet that say which parts follow (the low three bits
    /// are the mechanism).
    enum DirectivePart {
        static let domainSpec = 0x08, network = 0x10, cidr4 = 0x20, cidr6 = 0x40
        static let all = domainSpec | network | cidr4 | cidr6
    }

    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    // MARK: messages

    /// server → worker
    public enum ToWorker: Sendable, Equatable {
        /// The first frame: what every evaluation shares.
        case hello(receiver: [UInt8], maxQueries: Int)
        case evaluate(Evaluate)
        /// DNS answers the evaluation asked for (and others it is likely to need).
        case answers(id: UInt32, [Answer])
        /// The evaluation is over for the server (deadline): forget it.
        case cancel(id: UInt32)
    }

    public struct Evaluate: Sendable, Equatable {
        public var id: UInt32
        public var identity: SPFIdentity
        /// %{i} of an IPv6 client in upper-case nibbles.
        public var upperNibbles: Bool
        /// 4 or 16 octets.
        public var client: [UInt8]
        /// The mailbox checked: local-part "@" domain.
        public var sender: [UInt8]
        public var helo: [UInt8]
        public var answers: [Answer]
    }

    public struct Answer: Sendable, Equatable {
        public var question: DNSQuestion
        public var answer: SPFAnswer

        public init(_ question: DNSQuestion, _ answer: SPFAnswer) {
            self.question = question
            self.answer = answer
        }
    }

    /// worker → server
    public enum FromWorker: Sendable, Equatable {
        /// The evaluation cannot go on without this DNS answer.
        case need(id: UInt32, DNSQuestion)
        case done(id: UInt32, Result)
        /// Something the worker wants logged (it has no stderr of its own).
        case notice([UInt8])
    }

    public struct Result: Sendable, Equatable {
        public var result: SPFResult
        public var mechanism: [UInt8]
        public var explanation: [UInt8]
        public var problem: [UInt8]
        public var lookups: Int
        public var voidLookups: Int
        public var queries: Int

        public init(result: SPFResult, mechanism: [UInt8] = [], explanation: [UInt8] = [], problem: [UInt8] = [],
                    lookups: Int = 0, voidLookups: Int = 0, queries: Int = 0) {
            self.result = result
            self.mechanism = Array(mechanism.prefix(SPFWire.maxMechanism))
            self.explanation = Array(explanation.prefix(SPFWire.maxExplanation))
            self.problem = Array(problem.prefix(SPFWire.maxProblem))
            self.lookups = min(lookups, 255)
            self.voidLookups = min(voidLookups, 255)
            self.queries = min(queries, 65_535)
        }
    }

    // MARK: encoding

    public static func frame(_ message: ToWorker) -> [UInt8] {
        var w = Writer()
        switch message {
        case .hello(let receiver, let maxQueries):
            w.u8(1)
            w.bytes16(receiver)
            w.u16(maxQueries)
        case .evaluate(let e):
            w.u8(2)
            w.u32(e.id)
            w.u8(e.identity == .helo ? 1 : 0)
            w.u8(e.upperNibbles ? 1 : 0)
            w.bytes8(e.client)
            w.bytes16(e.sender)
            w.bytes16(e.helo)
            w.answers(e.answers)
        case .answers(let id, let answers):
            w.u8(3)
            w.u32(id)
            w.answers(answers)
        case .cancel(let id):
            w.u8(4)
            w.u32(id)
        }
        return w.framed()
    }

    public static func frame(_ message: FromWorker) -> [UInt8] {
        var w = Writer()
        switch message {
        case .need(let id, let question):
            w.u8(0x81)
            w.u32(id)
            w.bytes8(question.name.wire)
            w.u16(Int(question.type.rawValue))
        case .done(let id, let r):
            w.u8(0x82)
            w.u32(id)
            w.u8(SPFWire.resultCode(r.result))
            w.u8(r.lookups)
            w.u8(r.voidLookups)
            w.u16(r.queries)
            w.bytes16(r.mechanism)
            w.bytes16(r.explanation)
            w.bytes16(r.problem)
        case .notice(let text):
            w.u8(0x83)
            w.bytes16(Array(text.prefix(maxNotice)))
        }
        return w.framed()
    }

    static let results: [SPFResult] = [.pass, .fail, .softfail, .neutral, .none, .permerror, .temperror]
    static func resultCode(_ r: SPFResult) -> Int { results.firstIndex(of: r)! }

    // MARK: decoding

    /// The length of the frame starting at `bytes[offset...]` once its header is there:
    /// nil while fewer than 4 octets are buffered; throws when it exceeds `limit`.
    public static func frameLength(_ bytes: ArraySlice<UInt8>, limit: Int) throws(DecodeError) -> Int? {
        guard bytes.count >= 4 else { return nil }
        let i = bytes.startIndex
        let length = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
        guard length >= 1, length <= limit else { throw DecodeError("frame length \(length) outside 1...\(limit)") }
        return length
    }

    /// A frame body (type octet and payload) from a worker.
    public static func decodeFromWorker(_ body: ArraySlice<UInt8>) throws(DecodeError) -> FromWorker {
        var r = Reader(body)
        let message: FromWorker
        switch try r.u8() {
        case 0x81:
            let id = try r.u32()
            let name = try r.name()
            guard let type = DNSType(rawValue: UInt16(try r.u16())), type != .cname else { throw DecodeError("unknown DNS type") }
            message = .need(id: id, DNSQuestion(name, type))
        case 0x82:
            let id = try r.u32()
            let code = try r.u8()
            guard code < results.count else { throw DecodeError("result \(code) out of range") }
            let lookups = try r.u8(), voids = try r.u8(), queries = try r.u16()
            let mechanism = try r.bytes16(max: maxMechanism)
            let explanation = try r.bytes16(max: maxExplanation)
            let problem = try r.bytes16(max: maxProblem)
            message = .done(id: id, Result(result: results[code], mechanism: mechanism, explanation: explanation, problem: problem,
                                           lookups: lookups, voidLookups: voids, queries: queries))
        case 0x83:
            message = .notice(try r.bytes16(max: maxNotice))
        case let other:
            throw DecodeError("unknown message type \(other)")
        }
        try r.end()
        return message
    }

    /// A frame body from the server (the worker's side).
    public static func decodeToWorker(_ body: ArraySlice<UInt8>) throws(DecodeError) -> ToWorker {
        var r = Reader(body)
        let message: ToWorker
        switch try r.u8() {
        case 1:
            message = .hello(receiver: try r.bytes16(max: 255), maxQueries: try r.u16())
        case 2:
            let id = try r.u32()
            let identity: SPFIdentity = try r.u8() == 1 ? .helo : .mailfrom
            let upper = try r.u8() == 1
            let client = try r.bytes8(max: 16)
            guard client.count == 4 || client.count == 16 else { throw DecodeError("client address of \(client.count) octets") }
            let sender = try r.bytes16(max: maxSender)
            let helo = try r.bytes16(max: maxHelo)
            let answers = try r.answers()
            message = .evaluate(Evaluate(id: id, identity: identity, upperNibbles: upper, client: client, sender: sender,
                                         helo: helo, answers: answers))
        case 3:
            let id = try r.u32()
            message = .answers(id: id, try r.answers())
        case 4:
            message = .cancel(id: try r.u32())
        case let other:
            throw DecodeError("unknown message type \(other)")
        }
        try r.end()
        return message
    }

    // MARK: writer and reader

    /// Appends octet by octet into one array sized for a typical frame (an evaluation with
    /// its answers is ~200 octets), so encoding allocates once.
    struct Writer {
        var bytes: [UInt8]

        init() {
            bytes = [0, 0, 0, 0]
            bytes.reserveCapacity(512)
        }

        mutating func u8(_ v: Int) { bytes.append(UInt8(truncatingIfNeeded: v)) }
        mutating func u16(_ v: Int) {
            bytes.append(UInt8(truncatingIfNeeded: v >> 8))
            bytes.append(UInt8(truncatingIfNeeded: v))
        }
        mutating func u32(_ v: UInt32) {
            bytes.append(UInt8(truncatingIfNeeded: v >> 24))
            bytes.append(UInt8(truncatingIfNeeded: v >> 16))
            bytes.append(UInt8(truncatingIfNeeded: v >> 8))
            bytes.append(UInt8(truncatingIfNeeded: v))
        }
        mutating func bytes8(_ b: [UInt8]) { u8(b.count); bytes += b }
        mutating func bytes16(_ b: [UInt8]) { u16(b.count); bytes += b }
        mutating func bytes32(_ b: [UInt8]) { u32(UInt32(b.count)); bytes += b }
        /// A position in a record: 16 bits each end (a record is at most 65,535 octets).
        mutating func range(_ r: Range<Int>) {
            u16(r.lowerBound)
            u16(r.upperBound)
        }
        /// A position that may be absent: a presence octet first.
        mutating func range(_ r: Range<Int>?) {
            u8(r == nil ? 0 : 1)
            if let r { range(r) }
        }

        mutating func answers(_ list: [Answer]) {
            u16(list.count)
            for entry in list {
                bytes8(entry.question.name.wire)
                u16(Int(entry.question.type.rawValue))
                let a = entry.answer
                u8(Int(a.status.rawValue))
                u32(a.ttl)
                u16(min(a.recordCount, 65_535))
                bytes32(a.addresses)
                u8(a.names.count)
                for name in a.names { bytes8(name.wire) }
                switch a.spf {
                case .none: u8(0)
                case .multiple: u8(2)
                case .invalid(let why): u8(3); bytes16(Array(why.utf8))
                case .record(let record):
                    u8(1)
                    bytes32(record.source)
                    u16(record.directives.count)
                    for d in record.directives { directive(d) }
                    range(record.redirect)
                    range(record.exp)
                    u16(Int(record.macros.rawValue))
                }
                if let explanation = a.explanation { u8(1); bytes16(explanation) } else { u8(0) }
            }
        }

        /// One term in about 3 octets per octet of its source at most (" a" is 2 octets and 6
        /// here; " ip6:::", 7 and 23), so that an answer with the largest record the DNS can
        /// carry fits a frame with room to spare (SPFWireTests encodes the worst shapes): the
        /// qualifier; the mechanism with a bit for each part present; the term's text; then
        /// the parts present. Positions are 16-bit (a record is at most 65,535 octets).
        mutating func directive(_ d: SPFRecord.Directive) {
            u8(Int(d.qualifier))
            var flags = Int(d.mechanism.rawValue)
            if d.domainSpec != nil { flags |= DirectivePart.domainSpec }
            if d.network != nil { flags |= DirectivePart.network }
            if d.cidr4 != nil { flags |= DirectivePart.cidr4 }
            if d.cidr6 != nil { flags |= DirectivePart.cidr6 }
            u8(flags)
            range(d.text)
            if let spec = d.domainSpec { range(spec) }
            if let network = d.network { bytes8(network.octets) }
            if let c = d.cidr4 { u8(Int(c)) }
            if let c = d.cidr6 { u8(Int(c)) }
        }

        /// The frame: its length written into the 4 octets kept for it (in place, no copy).
        mutating func framed() -> [UInt8] {
            let n = bytes.count - 4
            bytes[0] = UInt8(truncatingIfNeeded: n >> 24)
            bytes[1] = UInt8(truncatingIfNeeded: n >> 16)
            bytes[2] = UInt8(truncatingIfNeeded: n >> 8)
            bytes[3] = UInt8(truncatingIfNeeded: n)
            return bytes
        }
    }

    struct Reader {
        let bytes: ArraySlice<UInt8>
        var offset: Int

        init(_ bytes: ArraySlice<UInt8>) {
            self.bytes = bytes
            offset = bytes.startIndex
        }

        mutating func take(_ n: Int) throws(DecodeError) -> ArraySlice<UInt8> {
            guard n >= 0, bytes.endIndex - offset >= n else { throw DecodeError("message ends early") }
            defer { offset += n }
            return bytes[offset..<(offset + n)]
        }
        mutating func u8() throws(DecodeError) -> Int { Int(try take(1).first!) }
        mutating func u16() throws(DecodeError) -> Int {
            let b = try take(2)
            return Int(b[b.startIndex]) << 8 | Int(b[b.startIndex + 1])
        }
        mutating func u32() throws(DecodeError) -> UInt32 {
            let b = try take(4)
            return b.reduce(0) { $0 << 8 | UInt32($1) }
        }
        mutating func bytes8(max: Int) throws(DecodeError) -> [UInt8] {
            let n = try u8()
            guard n <= max else { throw DecodeError("field of \(n) octets, at most \(max)") }
            return Array(try take(n))
        }
        mutating func bytes16(max: Int) throws(DecodeError) -> [UInt8] {
            let n = try u16()
            guard n <= max else { throw DecodeError("field of \(n) octets, at most \(max)") }
            return Array(try take(n))
        }
        mutating func bytes32(max: Int) throws(DecodeError) -> [UInt8] {
            let n = Int(try u32())
            guard n <= max else { throw DecodeError("field of \(n) octets, at most \(max)") }
            return Array(try take(n))
        }
        mutating func name() throws(DecodeError) -> DNSName {
            let wire = try bytes8(max: DNSName.maxWireLength)
            var i = 0
            var labels: [ArraySlice<UInt8>] = []
            while i < wire.count, wire[i] != 0 {
                let n = Int(wire[i])
                guard n <= DNSName.maxLabelLength, i + 1 + n < wire.count else { throw DecodeError("malformed name") }
                labels.append(wire[(i + 1)..<(i + 1 + n)])
                i += 1 + n
            }
            guard i == wire.count - 1 else { throw DecodeError("malformed name") }
            if labels.isEmpty { return DNSName(checkedWire: [0]) }  // the root (an MX of ".")
            guard let name = DNSName(labels: labels) else { throw DecodeError("malformed name") }
            return name
        }
        mutating func range(within count: Int) throws(DecodeError) -> Range<Int> {
            let lower = try u16(), upper = try u16()
            guard lower <= upper, upper <= count else { throw DecodeError("range outside the record") }
            return lower..<upper
        }

        mutating func optionalRange(within count: Int) throws(DecodeError) -> Range<Int>? {
            switch try u8() {
            case 0: return nil
            case 1: return try range(within: count)
            default: throw DecodeError("malformed position")
            }
        }

        mutating func directive(within count: Int) throws(DecodeError) -> SPFRecord.Directive {
            let qualifier = UInt8(try u8())
            let flags = try u8()
            guard flags & ~(DirectivePart.all | 0x07) == 0, let mechanism = SPFRecord.Mechanism(rawValue: UInt8(flags & 0x07)) else {
                throw DecodeError("unknown mechanism or part")
            }
            let text = try range(within: count)
            let spec = flags & DirectivePart.domainSpec != 0 ? try range(within: count) : nil
            var network: IPAddress?
            if flags & DirectivePart.network != 0 {
                guard let address = SPFRecord.address(try bytes8(max: 16)) else { throw DecodeError("malformed network") }
                network = address
            }
            let c4 = flags & DirectivePart.cidr4 != 0 ? UInt8(min(try u8(), 32)) : nil
            let c6 = flags & DirectivePart.cidr6 != 0 ? UInt8(min(try u8(), 128)) : nil
            return SPFRecord.Directive(qualifier: qualifier, mechanism: mechanism, domainSpec: spec, network: network,
                                       cidr4: c4, cidr6: c6, text: text)
        }

        mutating func answers() throws(DecodeError) -> [Answer] {
            let count = try u16()
            guard count <= SPFWire.maxAnswers else { throw DecodeError("\(count) answers, at most \(SPFWire.maxAnswers)") }
            var out: [Answer] = []
            out.reserveCapacity(count)
            for _ in 0..<count {
                let name = try self.name()
                guard let type = DNSType(rawValue: UInt16(try u16())) else { throw DecodeError("unknown DNS type") }
                guard let status = DNSStatus(rawValue: UInt8(try u8())) else { throw DecodeError("unknown DNS status") }
                var a = SPFAnswer(status: status, ttl: try u32())
                a.recordCount = try u16()
                a.addresses = try bytes32(max: 65_536)
                let names = try u8()
                guard names <= DNSMessage.maxNamesKept else { throw DecodeError("too many names") }
                for _ in 0..<names { a.names.append(try self.name()) }
                switch try u8() {
                case 0: a.spf = .none
                case 2: a.spf = .multiple
                case 3:
                    // The server writes this text (valid UTF-8); anything else is no frame of its.
                    guard let why = String(validating: try bytes16(max: SPFAnswer.maxProblem * 4), as: UTF8.self) else {
                        throw DecodeError("a problem text that is not UTF-8")
                    }
                    a.spf = .invalid(why)
                case 1:
                    let source = try bytes32(max: SPFRecord.maxLength)
                    var record = SPFRecord(source: source)
                    let directives = try u16()
                    guard directives <= source.count / 2 else { throw DecodeError("more terms than the record has room for") }
                    record.directives.reserveCapacity(directives)
                    for _ in 0..<directives { record.directives.append(try directive(within: source.count)) }
                    record.redirect = try optionalRange(within: source.count)
                    record.exp = try optionalRange(within: source.count)
                    record.macros = SPFMacroSet(rawValue: UInt16(try u16()))
                    a.spf = .record(record)
                default:
                    throw DecodeError("unknown record selection")
                }
                if try u8() == 1 { a.explanation = try bytes16(max: SPFAnswer.maxExplanationSource) }
                out.append(Answer(DNSQuestion(name, type), a))
            }
            return out
        }

        func end() throws(DecodeError) {
            guard offset == bytes.endIndex else { throw DecodeError("\(bytes.endIndex - offset) trailing octets") }
        }
    }
}
