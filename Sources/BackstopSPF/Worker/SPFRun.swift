// One pass of libspf2 over one evaluation, inside a worker process. An evaluation is run
// again from the start each time the server hands it a DNS answer it lacked: a pass that
// needs an answer it does not have stops at once and names that question, so the worker
// never waits on DNS and holds many evaluations at a time. Everything a pass counts (the
// ten DNS-mechanism lookups, two void lookups, the query cap) starts from zero each pass,
// so a rerun reaches the same point with the same counts. Pure state: no libspf2 calls.

#if canImport(BackstopCore)  // the fuzzers compile these files without the package
import BackstopCore
#endif

/// What an evaluation keeps between passes: what was asked, and the answers so far.
final class SPFWorkerEvaluation {
    let id: UInt32
    let identity: SPFIdentity
    let client: IPAddress
    let clientOctets: [UInt8]
    let upperNibbles: Bool
    /// local-part "@" domain of the identity checked.
    let mailbox: [UInt8]
    let domain: [UInt8]
    let helo: [UInt8]
    var answers: [DNSQuestion: SPFAnswer] = [:]
    /// Passes run so far (each after one more answer).
    var passes = 0

    /// Answers an evaluation keeps at most. The server sends fewer: a frame carries at most
    /// SPFDNS.maxPrefetch (64) answers, and only the first frame and the answers to TXT
    /// questions carry more than one; an evaluation asks at most maxQueries + 1 (141)
    /// questions, of which at most 11 are TXT (10 lookup terms and an exp). So at most
    /// 64 + 141 + 11 × 63 = 898 distinct answers reach it (the server never sends one twice).
    static let maxAnswers = 1_024

    init(_ e: SPFWire.Evaluate) {
        id = e.id
        identity = e.identity
        clientOctets = e.client
        client = IPAddress(octets: e.client) ?? .v4(0)
        upperNibbles = e.upperNibbles
        mailbox = e.sender
        helo = e.helo
        if let at = e.sender.lastIndex(of: UInt8(ascii: "@")) { domain = Array(e.sender[(at + 1)...]) } else { domain = e.sender }
        add(e.answers)
    }

    func add(_ list: [SPFWire.Answer]) {
        for entry in list where answers.count < SPFWorkerEvaluation.maxAnswers {
            answers[entry.question] = entry.answer
        }
    }
}

/// The state of one pass.
final class SPFRun {
    let evaluation: SPFWorkerEvaluation
    let receiver: [UInt8]
    let maxQueries: Int

    var lookups = 0
    var voidLookups = 0
    var queries = 0
    /// The first error that decides the result whatever libspf2 makes of it afterwards.
    var forced: (SPFResult, String)?
    /// Set when the pass stopped for an answer the worker does not have yet.
    var missing: DNSQuestion?
    /// What fetching the top-level record gave, when it gave no record.
    var topProblem: (SPFResult, String)?
    var recordFetches = 0
    /// Every record fetched, in order, with the domain it was fetched for.
    var records: [(domain: [UInt8], record: SPFRecord)] = []
    /// Names written into the records libspf2 compiles, in place of the real ones.
    var aliases: [Alias] = []
    /// Record texts of a record split into a chain of shorter ones (see SPFRewrite).
    var chunks: [[UInt8]] = []
    var explanationName: DNSName?
    var explanationText: [UInt8]?
    /// The domain of the record whose exp= named the explanation (its %{d}).
    var explanationOwner: [UInt8]?
    /// %{p} per target domain, found once per pass.
    var validated: [[UInt8]: [UInt8]] = [:]

    struct Alias {
        /// nil when the expanded name cannot be asked (an empty or over-long label).
        let name: DNSName?
        /// a/0 and mx/0: any address of the client's family matches.
        let anyAddress: Bool
        /// For exp= names: the domain of the record that named it (%{d} of the explanation).
        let owner: [UInt8]?
        /// An MX exchange: its address lookups are part of the mx mechanism's one lookup
        /// (RFC 7208 §4.6.4), not lookups of their own.
        let secondary: Bool
    }

    init(_ evaluation: SPFWorkerEvaluation, receiver: [UInt8], maxQueries: Int) {
        self.evaluation = evaluation
        self.receiver = receiver
        self.maxQueries = maxQueries
    }

    var client: IPAddress { evaluation.client }
    var addressType: DNSType { client.isV4 ? .a : .aaaa }

    func force(_ result: SPFResult, _ why: String) {
        if forced == nil { forced = (result, why) }
    }

    // MARK: aliases

    static let aliasSuffix = Array(".invalid".utf8)

    /// The short name libspf2 is given for `name`: "a<n>.invalid". Names below .invalid
    /// never exist (RFC 6761), and every name Backstop writes into a record is an alias, so
    /// a record cannot name an alias itself.
    func alias(_ name: DNSName?, anyAddress: Bool = false, owner: [UInt8]? = nil, secondary: Bool = false) -> String {
        aliases.append(Alias(name: name, anyAddress: anyAddress, owner: owner, secondary: secondary))
        return "a\(aliases.count - 1).invalid"
    }

    func chunkName(_ index: Int) -> String { "c\(index).invalid" }

    /// The alias or chunk a name libspf2 asks about stands for. Every name Backstop writes
    /// is an alias; the only plain names libspf2 asks about are the reverse name of the
    /// client and the names a PTR answer gave.
    enum Resolved {
        case alias(Alias)
        case chunk(Int)
        case plain(DNSName?)
    }

    func resolve(_ text: [UInt8]) -> Resolved {
        var bytes = text
        if bytes.last == UInt8(ascii: ".") { bytes.removeLast() }
        let suffix = SPFRun.aliasSuffix
        if bytes.count > suffix.count + 1, DNSName.equalFolded(bytes.suffix(suffix.count), suffix[...]) {
            let head = bytes.dropLast(suffix.count)
            if head.count >= 2, head.dropFirst().allSatisfy(SPFRecord.isDigit), head.count <= 7 {
                let index = head.dropFirst().reduce(0) { $0 * 10 + Int($1 - 0x30) }
                switch DNSName.fold(head.first!) {
                case UInt8(ascii: "a") where aliases.indices.contains(index): return .alias(aliases[index])
                case UInt8(ascii: "c") where chunks.indices.contains(index): return .chunk(index)
                default: break
                }
            }
        }
        return .plain(DNSName(text: String(decoding: bytes, as: UTF8.self)))
    }

    // MARK: answers

    /// The answer to `question` for this pass, with the query cap applied. nil when the
    /// worker does not have it yet: the pass must stop and ask for it.
    func answer(_ question: DNSQuestion) -> SPFAnswer? {
        if forced != nil || missing != nil { return SPFAnswer(status: .serverFailure) }
        queries += 1
        if queries > maxQueries {
            force(.permerror, "more than \(maxQueries) DNS queries")
            return SPFAnswer(status: .serverFailure)
        }
        guard let known = evaluation.answers[question] else {
            missing = question
            return nil
        }
        return known
    }

    /// Counts a DNS-mechanism lookup; false (and permerror) past the limit.
    func countLookup() -> Bool {
        lookups += 1
        if lookups > 10 {
            force(.permerror, "more than 10 DNS-mechanism lookups (RFC 7208 §4.6.4)")
            return false
        }
        return true
    }

    func countVoid(_ answer: SPFAnswer) {
        guard answer.isVoid else { return }
        voidLookups += 1
        if voidLookups > 2 { force(.permerror, "more than 2 void lookups (RFC 7208 §4.6.4)") }
    }

    // MARK: macros

    func macroContext(domain: [UInt8]) -> SPFMacroContext {
        var context = SPFMacroContext(sender: evaluation.mailbox, domain: domain, client: client,
                                      helo: evaluation.helo, receiver: receiver)
        context.upperNibbles = evaluation.upperNibbles
        return context
    }

    /// The context for expanding the domain-specs of `record` fetched for `domain`, with
    /// %{p} found only when the record uses it.
    func macroContext(domain: [UInt8], uses macros: SPFMacroSet) -> SPFMacroContext {
        var context = macroContext(domain: domain)
        if macros.contains(.validated) { context.validated = validatedName(target: domain) }
        return context
    }

    /// An expanded domain-spec as a name to ask (nil when it cannot be asked).
    func expandName(_ spec: ArraySlice<UInt8>?, domain: [UInt8], context: SPFMacroContext) -> DNSName? {
        guard let spec else { return DNSName(text: String(decoding: domain, as: UTF8.self)) }
        guard let expanded = context.expandDomain(spec), !expanded.isEmpty else { return nil }
        return DNSName(text: String(decoding: expanded, as: UTF8.self))
    }

    /// %{p} (RFC 7208 §7.3): a name of the client that PTR gives and A/AAAA confirms,
    /// preferring the target domain or a subdomain of it; "unknown" when there is none.
    /// These queries are not DNS-mechanism lookups and are not counted as such.
    func validatedName(target: [UInt8]) -> [UInt8] {
        let key = target.map(DNSName.fold)
        if let known = validated[key] { return known }
        var found: [DNSName] = []
        if let ptr = answer(DNSQuestion(DNSName.reverse(evaluation.clientOctets), .ptr)) {
            for name in ptr.names.prefix(10) {
                guard let addresses = answer(DNSQuestion(name, addressType)) else { break }
                if SPFRun.contains(addresses.addresses, evaluation.clientOctets) { found.append(name) }
            }
        }
        let targetName = DNSName(text: String(decoding: target, as: UTF8.self))
        let chosen = found.first(where: { $0 == targetName }) ?? found.first(where: { targetName.map($0.isSubdomain) ?? false })
            ?? found.first
        let value = chosen.map(\.macroText) ?? Array("unknown".utf8)
        validated[key] = value
        return value
    }

    static func contains(_ addresses: [UInt8], _ client: [UInt8]) -> Bool {
        let width = client.count
        var i = 0
        while i + width <= addresses.count {
            if addresses[i..<(i + width)].elementsEqual(client) { return true }
            i += width
        }
        return false
    }
}
