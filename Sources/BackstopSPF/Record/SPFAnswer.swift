// What SPF needs of one DNS answer, made once when the answer enters the cache: the
// addresses, the MX or PTR names, and for TXT the one SPF record already checked against
// the grammar (or why there is none) and the explanation text when the answer can serve
// as one. Everything else a TXT answer holds is dropped there, so a hostile 60 KB TXT
// record costs a few hundred octets of cache, not 60 KB. It neither asks DNS nor evaluates.

public enum SPFSelection: Sendable, Equatable {
    /// No "v=spf1" record among the TXT records.
    case none
    /// Exactly one, and it follows the grammar.
    case record(SPFRecord)
    /// More than one "v=spf1" record (RFC 7208 §4.5: permerror).
    case multiple
    /// Exactly one, and it breaks the grammar: why (at most `SPFAnswer.maxProblem` octets).
    case invalid(String)
}

/// A name an SPF record names without macros, so its answer can go to a worker with the
/// record before the worker asks (server side only; not sent on the wire).
public struct SPFRelated: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// a: A or AAAA by the client's family
        case address
        /// exists: A
        case exists
        /// mx: MX, then the exchanges' addresses
        case mx
        /// include, redirect, exp: TXT
        case txt
        /// ptr: the client's PTR, then the names' addresses
        case ptr
    }
    public var name: DNSName?
    public var kind: Kind
}

public struct SPFAnswer: Sendable, Equatable {
    public var status: DNSStatus
    public var ttl: UInt32
    /// A: 4 octets per address, AAAA: 16.
    public var addresses: [UInt8] = []
    /// PTR names (at most 11) or MX exchanges by preference (at most 11).
    public var names: [DNSName] = []
    /// Records of the asked type, also those not kept.
    public var recordCount = 0
    /// TXT: the SPF record, if any.
    public var spf: SPFSelection = .none
    /// TXT: the text of the single TXT record when it is a valid explanation-string of at
    /// most `maxExplanationSource` octets (RFC 7208 §6.2), else nil.
    public var explanation: [UInt8]?
    /// Macro letters used by the SPF record's domain-specs and by the explanation.
    public var macros = SPFMacroSet()
    /// TXT: names the record needs whose answers can be sent along (at most `maxRelated`).
    public var related: [SPFRelated] = []

    public static let maxProblem = 200
    public static let maxExplanationSource = 1_024
    public static let maxRelated = 24

    public init(status: DNSStatus, ttl: UInt32 = 0) {
        self.status = status
        self.ttl = ttl
    }

    /// NXDOMAIN or no record of the type: a "void lookup" (RFC 7208 §4.6.4).
    /// The macro letters of the SPF record this answer holds (its explanation's left out).
    public var recordMacros: SPFMacroSet {
        if case .record(let record) = spf { return record.macros }
        return SPFMacroSet()
    }

    /// The record and explanation octets a worker holds for this answer (parsed, a record
    /// takes up to 36 times its size).
    public var heldOctets: Int {
        var octets = explanation?.count ?? 0
        if case .record(let record) = spf { octets += record.source.count }
        return octets
    }

    public var isVoid: Bool { status == .nameError || (status == .success && recordCount == 0) }
    public var isFailure: Bool { status == .serverFailure || status == .timeout }

    /// The SPF view of a decoded answer to `question`.
    public init(_ answer: DNSAnswer, question: DNSQuestion) {
        status = answer.status
        ttl = answer.ttl
        recordCount = answer.recordCount
        switch question.type {
        case .a, .aaaa: addresses = answer.addresses
        case .mx, .ptr, .cname: names = answer.names
        case .txt: readTexts(answer.texts, owner: question.name)
        }
    }

    private mutating func readTexts(_ texts: [[UInt8]], owner: DNSName) {
        if texts.count == 1, texts[0].count <= SPFAnswer.maxExplanationSource,
           SPFMacro.check(texts[0][...], explanation: true) == nil {
            explanation = texts[0]
            macros.formUnion(SPFMacroSet(letters: texts[0][...]))
        }
        var found: [UInt8]?
        for text in texts where SPFRecord.isSPF1(text) {
            if found != nil {
                spf = .multiple
                return
            }
            found = text
        }
        guard let found else { return }
        switch SPFRecord.parse(found) {
        case .success(let record):
            spf = .record(record)
            macros.formUnion(record.macros)
            related = SPFAnswer.related(record, owner: owner)
        case .failure(let error):
            spf = .invalid(String(error.description.prefix(SPFAnswer.maxProblem)))
        }
    }

    /// The macro-free names `record` (published at `owner`) looks up, in order.
    static func related(_ record: SPFRecord, owner: DNSName) -> [SPFRelated] {
        var out: [SPFRelated] = []
        func name(_ range: Range<Int>?) -> DNSName?? {
            guard let range else { return .some(owner) }
            let spec = record.source[range]
            guard !spec.contains(UInt8(ascii: "%")) else { return .none }
            return .some(DNSName(text: String(decoding: spec, as: UTF8.self)))
        }
        for d in record.directives where out.count < maxRelated {
            let kind: SPFRelated.Kind
            switch d.mechanism {
            case .a: kind = .address
            case .mx: kind = .mx
            case .include: kind = .txt
            case .exists: kind = .exists
            case .ptr:
                out.append(SPFRelated(name: nil, kind: .ptr))
                continue
            case .all, .ip4, .ip6: continue
            }
            if case .some(.some(let n)) = name(d.domainSpec) { out.append(SPFRelated(name: n, kind: kind)) }
        }
        for range in [record.redirect, record.exp] {
            guard let range, out.count < maxRelated, case .some(.some(let n)) = name(range) else { continue }
            out.append(SPFRelated(name: n, kind: .txt))
        }
        return out
    }

    /// Approximate memory held, for the cache's byte budget.
    public var cost: Int {
        var total = 96 + addresses.count + (explanation?.count ?? 0)
        for name in names { total += name.wire.count + 32 }
        for r in related { total += (r.name?.wire.count ?? 0) + 40 }
        switch spf {
        case .record(let record): total += record.source.count + record.directives.count * MemoryLayout<SPFRecord.Directive>.stride
        case .invalid(let why): total += why.utf8.count
        case .none, .multiple: break
        }
        return total
    }
}
