// One `[[ratelimit.rule]]`: what it counts (recipients, messages or bytes), by which key,
// at which stage, how much is allowed, what to answer when over, and which traffic it
// applies to. Reading reports every bad value with file:line through ConfigSection.
// Evaluation lives in RateLimitCheck; this file only describes and reads a rule.

import NIOCore

/// What one hit is.
public enum RateCount: String, Sendable, Hashable, CaseIterable {
    /// One per recipient at RCPT; at DATA / END-OF-MESSAGE one message costs `recipient_count`.
    case recipient
    /// One per message (Postfix `instance`), counted once per key.
    case message
    /// The message size in bytes (`size` at END-OF-MESSAGE).
    case bytes

    var unitName: String {
        switch self {
        case .recipient: "recipients"
        case .message: "messages"
        case .bytes: "bytes"
        }
    }

    /// Stages at which this kind may count, the first one being the default.
    var stages: [ProtocolState] {
        switch self {
        case .recipient: [.rcpt, .data, .endOfMessage]
        case .message: [.endOfMessage, .data, .rcpt]
        case .bytes: [.endOfMessage]
        }
    }
}

public struct RateLimitRule: Sendable {
    public var name: String
    public var key: RateKeySpec
    public var count: RateCount
    /// The stage at which the rule counts (Postfix protocol_state).
    public var state: ProtocolState
    /// The limit as written: `limitCount` units per `period` nanoseconds.
    public var limitCount: Int64
    public var period: Int64
    public var parameters: GCRAParameters
    public var action: PolicyAction
    public var failAction: PolicyAction
    // Selectors: the rule applies only to requests that match all of them.
    public var onlySASL = false
    public var onlyUnauthenticated = false
    public var onlyNullSender = false
    public var onlyNetworks = NetworkList([])
    // Exemptions: a request matching any of them is not counted.
    public var exemptNetworks = NetworkList([])
    public var exemptSASLUsers: Set<String> = []
    public var exemptSenderDomains: [String] = []
    /// A table of per-key limits and exemptions (RateOverrides); nil for none.
    public var overrides: String?

    public static let defaultAction = PolicyAction.deferTemporarily("4.7.1 Rate limit exceeded, try again later")

    public init(name: String, key: RateKeySpec, count: RateCount, state: ProtocolState? = nil,
                limitCount: Int64, period: TimeAmount, burst: Int64? = nil,
                action: PolicyAction = RateLimitRule.defaultAction, failAction: PolicyAction = .dunno) {
        self.name = name
        self.key = key
        self.count = count
        self.state = state ?? count.stages[0]
        self.limitCount = limitCount
        self.period = period.nanoseconds
        self.parameters = GCRAParameters(count: limitCount, period: period.nanoseconds, burst: burst ?? limitCount)
            ?? GCRAParameters(count: 1, period: 1_000_000_000, burst: 1)!
        self.action = action
        self.failAction = failAction
    }

    /// Changes whenever what is counted changes (name, key, prefixes, what is counted, where),
    /// not when only the numbers (limit, burst), answers, selectors or exemptions change: a
    /// key's state carries over a new limit, and GCRA.apply reads it as at most the new
    /// burst used, as the PostgreSQL store does.
    /// The same in every process (FNV-1a of the rule's counting, not Swift's per-process
    /// seeded Hasher), so counters saved by one run are found by the next.
    public var identity: RateRuleIdentity {
        let text = "\(name)\u{0}\(key)\u{0}\(key.ipv4Prefix)/\(key.ipv6Prefix)\u{0}\(count.rawValue)\u{0}\(state.rawValue)"
        return RateRuleIdentity(name: name, fingerprint: FNV1a.hash(text.utf8))
    }

    /// "200 recipients per 1h (burst 200)".
    public var limitDescription: String {
        "\(limitCount) \(count.unitName) per \(DurationText.format(.nanoseconds(period))) (burst \(parameters.burst))"
    }

    /// Whether the selectors and exemptions let this rule count `request`.
    func applies(to request: PolicyRequest) -> Bool {
        let sasl = request.withValueBytes(.saslUsername) { $0.count } ?? 0
        if onlySASL && sasl == 0 { return false }
        if onlyUnauthenticated && sasl != 0 { return false }
        if onlyNullSender && (request.withValueBytes(.sender) { $0.count } ?? 0) != 0 { return false }
        if !onlyNetworks.isEmpty || !exemptNetworks.isEmpty {
            let address = IPAddress(request.clientAddress)
            if !onlyNetworks.isEmpty && !(address.map(onlyNetworks.contains) ?? false) { return false }
            if let address, exemptNetworks.contains(address) { return false }
        }
        if !exemptSASLUsers.isEmpty && sasl != 0 && exemptSASLUsers.contains(request.saslUsername.lowercased()) {
            return false
        }
        if !exemptSenderDomains.isEmpty {
            let sender = request.sender
            if let (_, domainPart) = Octets.splitAddress(sender), let domain = RateLimitRule.comparedForm(domainPart) {
                for exempt in exemptSenderDomains {
                    if exempt.hasPrefix(".") ? domain.hasSuffix(exempt) : domain == exempt { return false }
                }
            }
        }
        return true
    }
}

extension RateLimitRule {
    /// A domain as exemptions compare it, by the rules rate-limit keys are made with
    /// (RateKeySpec): lowercase A-labels without the trailing dot (`Example.ORG.` and
    /// `bücher.example` as `example.org` and `xn--bcher-kva.example`); nil when it is empty
    /// or its U-labels cannot be converted.
    static func comparedForm(_ domain: Substring) -> String? {
        var text = String(domain)
        return text.withUTF8 { octets -> String? in
            let value = UnsafeRawBufferPointer(octets)
            guard !value.isEmpty else { return nil }
            if !ASCII.check(value) {
                return RateKeySpec.aLabelForm(.senderDomain, value).map { String(decoding: $0, as: UTF8.self) }
            }
            return String(decoding: RateKeySpec.withoutRootDot(value), as: UTF8.self).lowercased()
        }
    }
}

// MARK: - Reading

extension RateLimitRule {
    /// Reads one `[[ratelimit.rule]]` table; nil when it is too broken to use (issues reported).
    static func read(_ s: ConfigSection, defaultFailAction: PolicyAction) -> RateLimitRule? {
        defer { s.finish() }
        var usable = true
        let name = s.string("name", default: "")
        if name.isEmpty || !name.utf8.allSatisfy({ $0.isRuleNameByte }) {
            s.report("name", name.isEmpty ? "missing: every rule needs a name (letters, digits, _ . -)"
                                          : "\"\(LogEscaping.escape(name))\" may contain only letters, digits, _ . and -")
            usable = false
        } else {
            s.name(name)
        }
        var parts: [RateKeyPart] = []
        if !s.has("key") {
            _ = s.raw("key")
            s.report("key", "missing: e.g. key = \"client_address\" or \"sasl_username+client_address\"")
            usable = false
        } else {
            switch RateKeySpec.parseParts(s.string("key", default: "")) {
            case .success(let p): parts = p
            case .failure(let e): s.report("key", e.message); usable = false
            }
        }
        let hasAddress = parts.contains(.clientAddress)
        let v4 = s.int("ipv4_prefix", default: 32, range: 1...32)
        let v6 = s.int("ipv6_prefix", default: 64, range: 1...128)
        if !hasAddress && !parts.isEmpty {
            for k in ["ipv4_prefix", "ipv6_prefix"] where s.has(k) {
                s.report(k, "only applies when the key includes client_address")
            }
        }
        let countText = s.string("count", default: "")
        let count = RateCount(rawValue: countText.lowercased())
        if count == nil {
            s.report("count", countText.isEmpty ? "missing: use \"recipient\", \"message\" or \"bytes\""
                                                : "\"\(LogEscaping.escape(countText))\" is not one of recipient, message, bytes")
            usable = false
        }
        var state = count?.stages[0] ?? .rcpt
        if let text = s.optionalString("protocol_state"), let count {
            let parsed = ProtocolState(wire: text)
            if count.stages.contains(parsed) { state = parsed } else {
                s.report("protocol_state", "a \(count.rawValue) rule counts at "
                    + count.stages.map(\.rawValue).joined(separator: " or ") + ", not \"\(LogEscaping.escape(text))\"")
            }
        }
        var limitCount: Int64 = 0
        var period: Int64 = 0
        let limitText = s.string("limit", default: "")
        if let (c, p) = RateLimitText.parseLimit(limitText) {
            limitCount = c
            period = p
        } else {
            s.report("limit", limitText.isEmpty ? "missing: e.g. limit = \"200/1h\" (COUNT/DURATION)"
                : "\"\(LogEscaping.escape(limitText))\" is not COUNT/DURATION such as \"200/1h\", \"1000/1d\" or \"50M/1h\"")
            usable = false
        }
        var burst = limitCount
        if let raw = s.raw("burst") {
            switch raw {
            case .int(let b) where b > 0: burst = Int64(b)
            case .string(let t) where RateLimitText.parseCount(t) != nil: burst = RateLimitText.parseCount(t)!
            default: s.report("burst", "expected a positive whole number (e.g. 20, or \"10M\" for bytes)")
            }
        }
        var parameters: GCRAParameters?
        if usable {
            switch RateLimitText.makeParameters(count: limitCount, period: period, burst: burst) {
            case .success(let p): parameters = p
            case .failure(let problem): s.report("limit", problem.message); usable = false
            }
        }
        let action = s.action("action", default: defaultAction)
        let failAction = s.action("fail_action", default: defaultFailAction)
        var rule = RateLimitRule(name: name, key: RateKeySpec(parts: parts, ipv4Prefix: v4, ipv6Prefix: v6),
                                 count: count ?? .recipient, state: state,
                                 limitCount: max(1, limitCount), period: .nanoseconds(max(1, period)),
                                 burst: burst, action: action, failAction: failAction)
        if let parameters { rule.parameters = parameters }
        rule.onlySASL = s.bool("only_sasl", default: rule.onlySASL)
        rule.onlyUnauthenticated = s.bool("only_unauthenticated", default: rule.onlyUnauthenticated)
        if rule.onlySASL && rule.onlyUnauthenticated {
            s.report("only_unauthenticated", "cannot be combined with only_sasl: the rule would never apply")
        }
        rule.onlyNullSender = s.bool("only_null_sender", default: rule.onlyNullSender)
        if rule.onlyNullSender, parts.contains(.senderDomain) {
            s.report("only_null_sender", "a null sender has no domain, so a sender_domain key never applies")
        }
        rule.onlyNetworks = s.networks("only_networks", default: [])
        rule.exemptNetworks = s.networks("exempt_networks", default: [])
        rule.exemptSASLUsers = Set(s.stringArray("exempt_sasl_users", default: []).map { $0.lowercased() })
        // In the form the sender's domain is compared in: A-labels, lowercase, no trailing dot.
        rule.exemptSenderDomains = s.stringArray("exempt_sender_domains", default: []).compactMap { written in
            let text = written.trimmingSpaces
            let subdomains = text.hasPrefix(".")
            guard !text.utf8.contains(UInt8(ascii: "@")), let domain = RateLimitRule.comparedForm(subdomains ? text.dropFirst() : text[...]) else {
                s.report("exempt_sender_domains", "\"\(LogEscaping.escape(written))\" is not a domain: write example.org, or .example.org for its subdomains")
                return nil
            }
            return subdomains ? "." + domain : domain
        }
        if let file = s.optionalString("overrides"), !file.isEmpty {
            if parts.count == 1 { rule.overrides = file } else if !parts.isEmpty {
                s.report("overrides", "overrides need a key of one part (sasl_username, sender, sender_domain, client_address, …); this rule counts by \(rule.key)")
            }
        }
        return usable ? rule : nil
    }
}

extension UInt8 {
    var isRuleNameByte: Bool {
        (self >= 0x30 && self <= 0x39) || (self >= 0x41 && self <= 0x5A) || (self >= 0x61 && self <= 0x7A)
            || self == 0x5F || self == 0x2E || self == 0x2D
    }
}
