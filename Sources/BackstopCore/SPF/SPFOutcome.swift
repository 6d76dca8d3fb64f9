// The values that cross the SPFVerifier boundary: what to check (SPFQuery) and what came
// out (SPFOutcome). Plain Sendable values, no libspf2 types, so the rest of Backstop never
// sees C. Codable, because in process isolation they cross a pipe to a worker process.

import NIOCore

/// RFC 7208 §2.6 results.
public enum SPFResult: String, Sendable, CaseIterable, Equatable, Codable {
    case pass, fail, softfail, neutral, none, permerror, temperror
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
public enum SPFIdentity: String, Sendable, Equatable, Codable {
    case mailfrom, helo
}

public struct SPFQuery: Sendable, Hashable, Codable {
    /// The client address as Postfix reports it; IPv4-mapped IPv6 is checked as IPv4.
    public var clientAddress: String
    /// The envelope sender; empty for a bounce (then postmaster@helo is checked).
    public var sender: String
    public var helo: String
    public var identity: SPFIdentity

    public init(clientAddress: String, sender: String, helo: String, identity: SPFIdentity = .mailfrom) {
        self.clientAddress = clientAddress
        self.sender = sender
        self.helo = helo
        self.identity = identity
    }

    /// The mailbox actually checked: the sender, `postmaster@domain` when it has no local
    /// part, `postmaster@helo` for a bounce or a HELO check.
    public var checkedMailbox: String {
        if identity == .helo || sender.isEmpty { return "postmaster@" + helo }
        if sender.hasPrefix("@") { return "postmaster" + sender }
        if !sender.contains("@") { return "postmaster@" + sender }
        return sender
    }

    /// Why `domain` cannot be an SPF domain (RFC 7208 §4.3), or nil when it can.
    static func domainProblem(_ domain: String) -> String? {
        var name = Substring(domain)
        if name.hasSuffix(".") { name = name.dropLast() }
        if name.isEmpty { return "empty domain" }
        if name.hasPrefix("[") || IPAddress(String(name)) != nil { return "domain is an address literal" }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        if labels.count < 2 { return "domain \"\(domain)\" is not a fully qualified name" }
        for label in labels {
            if label.isEmpty { return "domain \"\(domain)\" has an empty label" }
            if label.utf8.count > 63 { return "domain has a label longer than 63 octets" }
        }
        if name.utf8.count > 253 { return "domain is longer than 253 octets" }
        return nil
    }

    /// The domain whose policy is evaluated.
    public var domain: String {
        let mailbox = checkedMailbox
        guard let at = mailbox.lastIndex(of: "@") else { return mailbox }
        return String(mailbox[mailbox.index(after: at)...])
    }
}

public struct SPFOutcome: Sendable, Equatable, Codable {
    public var result: SPFResult
    public var query: SPFQuery
    /// The term that decided, as written in the record ("ip4:192.0.2.0/24", "-all"), or
    /// "default" when evaluation fell off the end of the record; nil for none/errors.
    public var mechanism: String?
    /// The explanation the domain publishes (exp=), expanded; nil when it has none or the
    /// result is not fail. Attacker-controlled text: sanitise before use.
    public var explanation: String?
    /// Why a permerror/temperror/none happened, for the log and the header comment.
    public var problem: String?
    /// DNS-mechanism lookups, void lookups and DNS queries this evaluation cost.
    public var lookups = 0
    public var voidLookups = 0
    public var queries = 0
    public var elapsed: TimeAmount = .zero

    public init(result: SPFResult, query: SPFQuery, mechanism: String? = nil, explanation: String? = nil, problem: String? = nil) {
        self.result = result
        self.query = query
        self.mechanism = mechanism
        self.explanation = explanation
        self.problem = problem
    }

    /// Explicit because TimeAmount is not Codable: `elapsed` travels as nanoseconds.
    private enum CodingKeys: String, CodingKey {
        case result, query, mechanism, explanation, problem, lookups, voidLookups, queries, elapsedNanoseconds
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        result = try c.decode(SPFResult.self, forKey: .result)
        query = try c.decode(SPFQuery.self, forKey: .query)
        mechanism = try c.decodeIfPresent(String.self, forKey: .mechanism)
        explanation = try c.decodeIfPresent(String.self, forKey: .explanation)
        problem = try c.decodeIfPresent(String.self, forKey: .problem)
        lookups = try c.decode(Int.self, forKey: .lookups)
        voidLookups = try c.decode(Int.self, forKey: .voidLookups)
        queries = try c.decode(Int.self, forKey: .queries)
        elapsed = .nanoseconds(try c.decode(Int64.self, forKey: .elapsedNanoseconds))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(result, forKey: .result)
        try c.encode(query, forKey: .query)
        try c.encodeIfPresent(mechanism, forKey: .mechanism)
        try c.encodeIfPresent(explanation, forKey: .explanation)
        try c.encodeIfPresent(problem, forKey: .problem)
        try c.encode(lookups, forKey: .lookups)
        try c.encode(voidLookups, forKey: .voidLookups)
        try c.encode(queries, forKey: .queries)
        try c.encode(elapsed.nanoseconds, forKey: .elapsedNanoseconds)
    }
}
