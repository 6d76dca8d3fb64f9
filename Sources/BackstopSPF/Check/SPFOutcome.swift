// The values that cross the SPF engine's boundary: what to check (SPFQuery) and what came
// out (SPFOutcome). Sendable values with every string cut to a fixed size when the value is
// made, so nothing a domain owner writes is kept at its own length.

import BackstopCore
import NIOCore

public struct SPFQuery: Sendable, Hashable {
    /// The fields, behind one reference: a query rides in every outcome and is read
    /// through it (`outcome.query.domain`), and a copy of seven fields retained each string.
    private struct Fields: Sendable, Hashable {
        let clientAddress: String
        let sender: String
        let helo: String
        let identity: SPFIdentity
        let client: IPAddress?
        let checkedMailbox: String
        let domain: String
    }

    private final class Box: Sendable {
        let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private let box: Box

    /// The client address as Postfix reports it; IPv4-mapped IPv6 is checked as IPv4.
    public var clientAddress: String { box.fields.clientAddress }
    /// The envelope sender; empty for a bounce (then postmaster@helo is checked).
    public var sender: String { box.fields.sender }
    public var helo: String { box.fields.helo }
    public var identity: SPFIdentity { box.fields.identity }
    /// The client address parsed (nil when it is not one).
    public var client: IPAddress? { box.fields.client }
    /// The mailbox actually checked: the sender, `postmaster@domain` when it has no local
    /// part, `postmaster@helo` for a bounce or a HELO check. A domain in U-labels (an
    /// SMTPUTF8 sender) is written in A-labels, as RFC 8616 §3 asks.
    public var checkedMailbox: String { box.fields.checkedMailbox }
    /// The domain whose policy is evaluated (the part of `checkedMailbox` after its last "@").
    public var domain: String { box.fields.domain }

    /// `parsed`: the client address already parsed, when the caller has it.
    public init(clientAddress: String, sender: String, helo: String, identity: SPFIdentity = .mailfrom, parsed: IPAddress? = nil) {
        let (checkedMailbox, domain) = SPFQuery.mailbox(sender: identity == .helo ? "" : sender, helo: helo)
        box = Box(Fields(clientAddress: clientAddress, sender: sender, helo: helo, identity: identity,
                         client: parsed ?? IPAddress(clientAddress), checkedMailbox: checkedMailbox, domain: domain))
    }

    public static func == (a: SPFQuery, b: SPFQuery) -> Bool { a.box === b.box || a.box.fields == b.box.fields }
    public func hash(into hasher: inout Hasher) { hasher.combine(box.fields) }

    /// The same query for the other identity.
    public func with(identity: SPFIdentity) -> SPFQuery {
        SPFQuery(clientAddress: clientAddress, sender: sender, helo: helo, identity: identity)
    }

    /// The mailbox checked and its domain, found on octets (this runs for every request).
    static func mailbox(sender: String, helo: String) -> (String, String) {
        // Where the last "@" is, whether any octet is not ASCII, and the domain after the "@"
        // made from those octets (no String index arithmetic).
        let (at, ascii, after) = Octets.with(sender) { octets -> (Int?, Bool, String) in
            var at: Int?
            var high: UInt8 = 0
            for (i, b) in octets.enumerated() {
                if b == 0x40 { at = i }
                high |= b
            }
            guard let at else { return (nil, high < 0x80, "") }
            return (at, high < 0x80, String(decoding: octets[(at + 1)...], as: UTF8.self))
        }
        let mailbox: String, domain: String
        if sender.isEmpty {
            mailbox = "postmaster@" + helo
            domain = helo
        } else if let at {
            mailbox = at == 0 ? "postmaster" + sender : sender
            domain = after
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
        Octets.with(domain) { octets -> String? in
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
    /// What the evaluation found, behind one reference. An outcome is copied several times
    /// per request (out of the cache, into the message's state, into its verdict); each copy
    /// of the fields themselves retained several strings, a copy of this is one retain.
    private struct Fields: Sendable, Equatable {
        var result: SPFResult
        var mechanism: String?
        var explanation: String?
        var problem: String?
        var lookups = 0
        var voidLookups = 0
        var queries = 0
    }

    /// Copy-on-write: a setter copies the box first unless this value is its only holder,
    /// so a box that two values share is never written (hence `@unchecked Sendable`).
    private final class Box: @unchecked Sendable {
        var fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var box: Box

    private mutating func unique() -> Box {
        if !isKnownUniquelyReferenced(&box) { box = Box(box.fields) }
        return box
    }

    public var result: SPFResult {
        get { box.fields.result }
        set { unique().fields.result = newValue }
    }
    /// What was asked. Kept beside the box, not in it, like `cached` and `elapsed`: an
    /// answer from the outcome cache sets these three for its own request, and the
    /// evaluation's fields it shares with the cache are not copied for that.
    public var query: SPFQuery
    /// The term that decided, as written in the record ("ip4:192.0.2.0/24", "-all"),
    /// "default" when evaluation fell off the end of the record, "localhost"; nil otherwise.
    public var mechanism: String? {
        get { box.fields.mechanism }
        set { unique().fields.mechanism = newValue }
    }
    /// The explanation the domain publishes (exp=), expanded; only for fail.
    /// Attacker-controlled text: sanitise before use.
    public var explanation: String? {
        get { box.fields.explanation }
        set { unique().fields.explanation = newValue }
    }
    /// Why a permerror/temperror/none happened, for the log.
    public var problem: String? {
        get { box.fields.problem }
        set { unique().fields.problem = newValue }
    }
    /// DNS-mechanism lookups, void lookups and DNS queries this evaluation cost.
    public var lookups: Int {
        get { box.fields.lookups }
        set { unique().fields.lookups = newValue }
    }
    public var voidLookups: Int {
        get { box.fields.voidLookups }
        set { unique().fields.voidLookups = newValue }
    }
    public var queries: Int {
        get { box.fields.queries }
        set { unique().fields.queries = newValue }
    }
    public var elapsed: TimeAmount = .zero
    /// True when the outcome came from the outcome cache.
    public var cached = false

    public static func == (a: SPFOutcome, b: SPFOutcome) -> Bool {
        (a.box === b.box || a.box.fields == b.box.fields) && a.query == b.query && a.elapsed == b.elapsed && a.cached == b.cached
    }

    /// Longest strings an outcome keeps.
    public static let maxMechanism = SPFWire.maxMechanism
    public static let maxExplanation = SPFWire.maxExplanation
    public static let maxProblem = SPFWire.maxProblem

    public init(result: SPFResult, query: SPFQuery, mechanism: String? = nil, explanation: String? = nil, problem: String? = nil) {
        self.query = query
        box = Box(Fields(result: result,
                         mechanism: mechanism.map { $0.prefix(octets: SPFOutcome.maxMechanism) },
                         explanation: explanation.map { $0.prefix(octets: SPFOutcome.maxExplanation) },
                         problem: problem.map { $0.prefix(octets: SPFOutcome.maxProblem) }))
    }

    /// This outcome as the outcome cache answers it for `query`: the evaluation's fields
    /// shared (one reference), the query, `cached` and `elapsed` its own. Built directly, so
    /// the kept outcome's query is neither retained nor released on the way.
    func answering(_ query: SPFQuery) -> SPFOutcome {
        SPFOutcome(box: box, query: query, elapsed: .zero, cached: true)
    }

    private init(box: Box, query: SPFQuery, elapsed: TimeAmount, cached: Bool) {
        self.box = box
        self.query = query
        self.elapsed = elapsed
        self.cached = cached
    }

    /// Approximate memory held, for cache budgets.
    var cost: Int {
        200 + query.clientAddress.utf8.count + query.sender.utf8.count + query.helo.utf8.count
            + (mechanism?.utf8.count ?? 0) + (explanation?.utf8.count ?? 0) + (problem?.utf8.count ?? 0)
    }
}
