// The values that cross the SPF engine's boundary: what to check (SPFQuery) and what came
// out (SPFOutcome). Sendable values with every string cut to a fixed size when the value is
// made, so nothing a domain owner writes is kept at its own length.

import BackstopCore
import NIOCore

public struct SPFQuery: Sendable, Hashable {
    /// The fields, behind one reference: a query rides in every outcome and is read
    /// through it (`outcome.query.domain`), and a copy of seven fields retained each string.
    private final class Fields: Sendable {
        let clientAddress: String
        let sender: String
        let helo: String
        let identity: SPFIdentity
        let client: IPAddress?
        let checkedMailbox: String
        let domain: String

        init(clientAddress: String, sender: String, helo: String, identity: SPFIdentity, client: IPAddress?) {
            self.clientAddress = clientAddress
            self.sender = sender
            self.helo = helo
            self.identity = identity
            self.client = client
            (checkedMailbox, domain) = SPFQuery.mailbox(sender: identity == .helo ? "" : sender, helo: helo)
        }
    }

    private let fields: Fields

    /// The client address as Postfix reports it; IPv4-mapped IPv6 is checked as IPv4.
    public var clientAddress: String { fields.clientAddress }
    /// The envelope sender; empty for a bounce (then postmaster@helo is checked).
    public var sender: String { fields.sender }
    public var helo: String { fields.helo }
    public var identity: SPFIdentity { fields.identity }
    /// The client address parsed (nil when it is not one).
    public var client: IPAddress? { fields.client }
    /// The mailbox actually checked: the sender, `postmaster@domain` when it has no local
    /// part, `postmaster@helo` for a bounce or a HELO check. A domain in U-labels (an
    /// SMTPUTF8 sender) is written in A-labels, as RFC 8616 §3 asks.
    public var checkedMailbox: String { fields.checkedMailbox }
    /// The domain whose policy is evaluated (the part of `checkedMailbox` after its last "@").
    public var domain: String { fields.domain }

    /// `parsed`: the client address already parsed, when the caller has it.
    public init(clientAddress: String, sender: String, helo: String, identity: SPFIdentity = .mailfrom, parsed: IPAddress? = nil) {
        fields = Fields(clientAddress: clientAddress, sender: sender, helo: helo, identity: identity,
                        client: parsed ?? IPAddress(clientAddress))
    }

    /// Equal when what they ask is equal (the derived fields follow from it).
    public static func == (a: SPFQuery, b: SPFQuery) -> Bool {
        a.fields === b.fields || (a.clientAddress == b.clientAddress && a.sender == b.sender && a.helo == b.helo
            && a.identity == b.identity && a.client == b.client)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(clientAddress)
        hasher.combine(sender)
        hasher.combine(helo)
        hasher.combine(identity)
        hasher.combine(client)
    }

    /// The same query for the other identity.
    public func with(identity: SPFIdentity) -> SPFQuery {
        SPFQuery(clientAddress: clientAddress, sender: sender, helo: helo, identity: identity)
    }

    /// The mailbox checked and its domain, found on octets (this runs for every request).
    static func mailbox(sender: String, helo: String) -> (String, String) {
        var copy = sender
        // Where the last "@" is, and whether any octet is not ASCII.
        let (at, ascii) = copy.withUTF8 { octets -> (Int?, Bool) in
            var at: Int?
            var high: UInt8 = 0
            for (i, b) in octets.enumerated() {
                if b == 0x40 { at = i }
                high |= b
            }
            return (at, high < 0x80)
        }
        let mailbox: String, domain: String
        if sender.isEmpty {
            mailbox = "postmaster@" + helo
            domain = helo
        } else if let at {
            mailbox = at == 0 ? "postmaster" + sender : sender
            domain = at == sender.utf8.count - 1 ? "" : String(sender.utf8.suffix(sender.utf8.count - at - 1))!
        } else {
            mailbox = "postmaster@" + sender
            domain = sender
        }
        // A domain in U-labels is asked in A-labels; an ASCII sender needs no look.
        if ascii && !sender.isEmpty { return (mailbox, domain) }
        guard domain.utf8.contains(where: { $0 >= 0x80 }), let converted = DomainName.asciiForm(domain) else {
            return (mailbox, domain)
        }
        let cut = mailbox.utf8.lastIndex(of: UInt8(ascii: "@"))!
        return (String(mailbox.utf8[...cut])! + converted, converted)
    }

    /// Why `domain` cannot be an SPF domain (RFC 7208 §4.3), or nil when it can. Read from
    /// octets: this runs for every evaluation.
    public static func domainProblem(_ domain: String) -> String? {
        var copy = domain
        return copy.withUTF8 { octets -> String? in
            var name = octets[...]
            if name.last == UInt8(ascii: ".") { name = name.dropLast() }
            if name.isEmpty { return "empty domain" }
            if name.first == UInt8(ascii: "[") { return "domain is an address literal" }
            var labels = 1, label = 0, digitsAndDots = true, colon = false
            for b in name {
                if b == UInt8(ascii: ".") {
                    if label == 0 { return "domain has an empty label" }
                    labels += 1
                    label = 0
                    continue
                }
                label += 1
                if label > 63 { return "domain has a label longer than 63 octets" }
                if !(b >= 0x30 && b <= 0x39) { digitsAndDots = false }
                if b == UInt8(ascii: ":") { colon = true }
            }
            if label == 0 { return "domain has an empty label" }
            if (digitsAndDots || colon), IPAddress(String(decoding: name, as: UTF8.self)) != nil { return "domain is an address literal" }
            if labels < 2 { return "domain is not a fully qualified name" }
            if name.count > 253 { return "domain is longer than 253 octets" }
            return nil
        }
    }
}

public struct SPFOutcome: Sendable, Equatable {
    /// The fields, behind one reference. An outcome is copied several times per request
    /// (out of the cache, into the message's state, into its verdict); each copy of the
    /// fields themselves retained a dozen strings, a copy of this is one retain.
    /// Copy-on-write: a setter copies the storage first unless this value is its only holder,
    /// so storage that two values share is never written (hence `@unchecked Sendable`).
    private final class Storage: @unchecked Sendable {
        var result: SPFResult
        var query: SPFQuery
        var mechanism: String?
        var explanation: String?
        var problem: String?
        var lookups = 0
        var voidLookups = 0
        var queries = 0
        var elapsed: TimeAmount = .zero
        var cached = false

        init(result: SPFResult, query: SPFQuery, mechanism: String?, explanation: String?, problem: String?) {
            self.result = result
            self.query = query
            self.mechanism = mechanism
            self.explanation = explanation
            self.problem = problem
        }

        func copy() -> Storage {
            let c = Storage(result: result, query: query, mechanism: mechanism, explanation: explanation, problem: problem)
            (c.lookups, c.voidLookups, c.queries, c.elapsed, c.cached) = (lookups, voidLookups, queries, elapsed, cached)
            return c
        }
    }

    private var storage: Storage

    private mutating func unique() -> Storage {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return storage
    }

    public var result: SPFResult {
        get { storage.result }
        set { unique().result = newValue }
    }
    public var query: SPFQuery {
        get { storage.query }
        set { unique().query = newValue }
    }
    /// The term that decided, as written in the record ("ip4:192.0.2.0/24", "-all"),
    /// "default" when evaluation fell off the end of the record, "localhost"; nil otherwise.
    public var mechanism: String? {
        get { storage.mechanism }
        set { unique().mechanism = newValue }
    }
    /// The explanation the domain publishes (exp=), expanded; only for fail.
    /// Attacker-controlled text: sanitise before use.
    public var explanation: String? {
        get { storage.explanation }
        set { unique().explanation = newValue }
    }
    /// Why a permerror/temperror/none happened, for the log.
    public var problem: String? {
        get { storage.problem }
        set { unique().problem = newValue }
    }
    /// DNS-mechanism lookups, void lookups and DNS queries this evaluation cost.
    public var lookups: Int {
        get { storage.lookups }
        set { unique().lookups = newValue }
    }
    public var voidLookups: Int {
        get { storage.voidLookups }
        set { unique().voidLookups = newValue }
    }
    public var queries: Int {
        get { storage.queries }
        set { unique().queries = newValue }
    }
    public var elapsed: TimeAmount {
        get { storage.elapsed }
        set { unique().elapsed = newValue }
    }
    /// True when the outcome came from the outcome cache.
    public var cached: Bool {
        get { storage.cached }
        set { unique().cached = newValue }
    }

    public static func == (a: SPFOutcome, b: SPFOutcome) -> Bool {
        if a.storage === b.storage { return true }
        let x = a.storage, y = b.storage
        return x.result == y.result && x.query == y.query && x.mechanism == y.mechanism && x.explanation == y.explanation
            && x.problem == y.problem && x.lookups == y.lookups && x.voidLookups == y.voidLookups && x.queries == y.queries
            && x.elapsed == y.elapsed && x.cached == y.cached
    }

    /// Longest strings an outcome keeps.
    public static let maxMechanism = SPFWire.maxMechanism
    public static let maxExplanation = SPFWire.maxExplanation
    public static let maxProblem = SPFWire.maxProblem

    public init(result: SPFResult, query: SPFQuery, mechanism: String? = nil, explanation: String? = nil, problem: String? = nil) {
        storage = Storage(result: result, query: query,
                          mechanism: mechanism.map { $0.prefix(octets: SPFOutcome.maxMechanism) },
                          explanation: explanation.map { $0.prefix(octets: SPFOutcome.maxExplanation) },
                          problem: problem.map { $0.prefix(octets: SPFOutcome.maxProblem) })
    }

    /// Approximate memory held, for cache budgets.
    var cost: Int {
        200 + query.clientAddress.utf8.count + query.sender.utf8.count + query.helo.utf8.count
            + (mechanism?.utf8.count ?? 0) + (explanation?.utf8.count ?? 0) + (problem?.utf8.count ?? 0)
    }
}
