// The "spf" check: decides what to answer Postfix from SPF results. It applies the skip
// rules, asks SPFVerifier once per message (instance) and briefly per client+sender+helo,
// maps each result to its configured action, and adds the Received-SPF or
// Authentication-Results header once per message. It never calls libspf2 itself.

import Foundation
import Logging
import Metrics
import NIOCore

public final class SPFCheck: Check {
    public let name = "spf"
    public let settings: SPFSettings
    public let verifier: SPFVerifier
    let instances: SPFFutureCache<SPFEvaluated>
    let recent: SPFFutureCache<SPFOutcome>
    let logger: Logger

    public var testMode: Bool { settings.testMode }

    public var failVerdict: Verdict {
        let action = settings.actions[.temperror] ?? .dunno
        return Verdict(SPFCheck.fill(action, [
            "result": "temperror", "domain": "the sender's domain", "client": "this client", "sender": "this sender",
            "helo": "", "identity": "mailfrom", "explanation": "", "why": settings.explanationURL ?? "",
        ]), reason: "spf=temperror")
    }

    /// `previous`: the check this one replaces on reload; its caches are kept when their
    /// settings did not change, so a message in flight still gets one header.
    public init(settings: SPFSettings, verifier: SPFVerifier, logger: Logger = Logger(label: "backstop.spf"),
                previous: SPFCheck? = nil) {
        self.settings = settings
        self.verifier = verifier
        self.logger = logger
        if let previous, previous.settings.resultCacheSize == settings.resultCacheSize,
           previous.settings.resultCacheTTL == settings.resultCacheTTL, previous.verifier === verifier {
            instances = previous.instances
            recent = previous.recent
        } else {
            // A message's outcome is kept as long as its transaction may reasonably take
            // (smtpd allows 300 s per command), and for at least 10,000 messages at a time:
            // the header-once rule depends on it even when result caching is off.
            instances = SPFFutureCache(capacity: max(settings.resultCacheSize, 10_000), lifetime: .minutes(15), name: "instance")
            recent = SPFFutureCache(capacity: settings.resultCacheSize, lifetime: settings.resultCacheTTL, name: "recent")
        }
    }

    public func evaluate(_ request: PolicyRequest, context: CheckContext) -> CheckResult {
        if settings.skipAuthenticated && !request.saslUsername.isEmpty {
            return .done(.noOpinion("spf=skipped authenticated"))
        }
        let client = request.clientAddress
        guard let address = IPAddress(client) else { return .done(.noOpinion("spf=skipped no_client_address")) }
        if settings.trustedNetworks.contains(address) { return .done(.noOpinion("spf=skipped trusted_network")) }
        let sender = request.sender
        let helo = request.heloName
        if !sender.isEmpty, SPFSettings.listed(SPFQuery(clientAddress: client, sender: sender, helo: helo).domain,
                                                in: settings.skipSenderDomains) {
            return .done(.noOpinion("spf=skipped sender_domain"))
        }

        let instance = request.instance
        let key = "\(client)|\(sender)|\(helo)"
        let deadline = context.deadline - .milliseconds(20)
        let start: () -> EventLoopFuture<SPFEvaluated> = { self.evaluations(client: client, sender: sender, helo: helo, deadline: deadline, on: context.eventLoop) }
        let future = instance.isEmpty ? start() : instances.future(for: instance + "|" + key, on: context.eventLoop, start: start).0
        let eventLoop = context.eventLoop
        return .pending(future.hop(to: eventLoop).map { evaluated in
            let headerAllowed = instance.isEmpty ? true : self.instances.claimFlag(instance + "|" + key)
            let verdict = self.verdict(for: evaluated, header: headerAllowed)
            self.log(evaluated, verdict, context.logger)
            return verdict
        })
    }

    /// The outcomes for one message: HELO first when configured, then MAIL FROM.
    func evaluations(client: String, sender: String, helo: String, deadline: NIODeadline, on eventLoop: any EventLoop) -> EventLoopFuture<SPFEvaluated> {
        let heloQuery = SPFQuery(clientAddress: client, sender: "", helo: helo, identity: .helo)
        // A bounce's MAIL FROM identity is postmaster@helo (RFC 7208 §2.4); still "mailfrom".
        let mailQuery = SPFQuery(clientAddress: client, sender: sender, helo: helo, identity: .mailfrom)
        let heloUsable = !helo.isEmpty && SPFQuery.domainProblem(helo) == nil
        guard settings.heloCheck, heloUsable else {
            return outcome(mailQuery, deadline: deadline, on: eventLoop).map { SPFEvaluated(helo: nil, mailfrom: $0) }
        }
        return outcome(heloQuery, deadline: deadline, on: eventLoop).flatMap { heloOutcome in
            if heloOutcome.result == .fail || sender.isEmpty {
                // A bounce's MAIL FROM identity is postmaster@helo, just evaluated: no second evaluation.
                var mailfrom = heloOutcome
                mailfrom.query.identity = .mailfrom
                return eventLoop.makeSucceededFuture(SPFEvaluated(helo: heloOutcome, mailfrom: sender.isEmpty ? mailfrom : nil))
            }
            return self.outcome(mailQuery, deadline: deadline, on: eventLoop).map { SPFEvaluated(helo: heloOutcome, mailfrom: $0) }
        }
    }

    /// One evaluation, shared with identical ones of the last `result_cache_ttl`.
    func outcome(_ query: SPFQuery, deadline: NIODeadline, on eventLoop: any EventLoop) -> EventLoopFuture<SPFOutcome> {
        let key = "\(query.identity.rawValue)|\(query.clientAddress)|\(query.sender)|\(query.helo)"
        let (future, _) = recent.future(for: key, on: eventLoop) { self.verifier.evaluate(query, deadline: deadline, on: eventLoop) }
        future.whenSuccess { outcome in
            // A temporary error is not worth remembering: the next message may do better.
            if outcome.result == .temperror { self.recent.remove(key, ifSame: future) }
        }
        return future
    }

    // MARK: actions and headers

    func verdict(for evaluated: SPFEvaluated, header headerAllowed: Bool) -> Verdict {
        if let helo = evaluated.helo, helo.result == .fail {
            return refusalOrHeader(helo, headerAllowed: headerAllowed, strict: false)
        }
        guard let outcome = evaluated.mailfrom ?? evaluated.helo else { return .noOpinion("spf=none") }
        let strict = outcome.query.identity == .mailfrom && SPFSettings.listed(outcome.query.domain, in: settings.strictDomains)
        return refusalOrHeader(outcome, headerAllowed: headerAllowed, strict: strict)
    }

    func refusalOrHeader(_ outcome: SPFOutcome, headerAllowed: Bool, strict: Bool) -> Verdict {
        var action = settings.actions[outcome.result] ?? .dunno
        var reason = "spf=\(outcome.result.rawValue)"
        if outcome.query.identity == .helo { reason += " identity=helo" }
        if strict && outcome.result != .pass && outcome.result != .temperror && !action.isRefusal {
            action = settings.actions[.fail] ?? action
            reason += " strict_domain"
        }
        if action.isNoOpinion {
            guard headerAllowed, let header = header(for: outcome) else {
                return Verdict(.dunno, reason: reason + (headerAllowed ? "" : " header_already_added"))
            }
            return Verdict(.prepend(header), reason: reason)
        }
        return Verdict(SPFCheck.fill(action, values(for: outcome)), reason: reason)
    }

    func values(for outcome: SPFOutcome) -> [String: String] {
        var explanation = ""
        if let text = outcome.explanation {
            explanation = ResponseEncoder.sanitise(text, limit: 200)
        } else if let url = settings.explanationURL {
            explanation = "See " + SPFCheck.fillText(url, urlValues(for: outcome))
        }
        return [
            "result": outcome.result.rawValue,
            "domain": outcome.query.domain,
            "client": outcome.query.clientAddress,
            "sender": outcome.query.checkedMailbox,
            "helo": outcome.query.helo,
            "identity": outcome.query.identity.rawValue,
            "explanation": explanation,
            "why": settings.explanationURL.map { SPFCheck.fillText($0, urlValues(for: outcome)) } ?? "",
        ]
    }

    func urlValues(for outcome: SPFOutcome) -> [String: String] {
        [
            "result": outcome.result.rawValue,
            "domain": SPFMacroContext.urlEscape(outcome.query.domain),
            "client": SPFMacroContext.urlEscape(outcome.query.clientAddress),
            "sender": SPFMacroContext.urlEscape(outcome.query.checkedMailbox),
            "helo": SPFMacroContext.urlEscape(outcome.query.helo),
            "identity": outcome.query.identity.rawValue,
        ]
    }

    /// `{name}` placeholders in an action's text replaced by `values`.
    static func fill(_ action: PolicyAction, _ values: [String: String]) -> PolicyAction {
        switch action {
        case .reject(let t): return .reject(t.map { fillText($0, values) })
        case .deferTemporarily(let t): return .deferTemporarily(t.map { fillText($0, values) })
        case .deferIfPermit(let t): return .deferIfPermit(t.map { fillText($0, values) })
        case .deferIfReject(let t): return .deferIfReject(t.map { fillText($0, values) })
        case .reply(let code, let enhanced, let text): return .reply(code: code, enhanced: enhanced, text: fillText(text, values))
        case .prepend(let t): return .prepend(fillText(t, values))
        case .warn(let t): return .warn(fillText(t, values))
        case .info(let t): return .info(fillText(t, values))
        case .hold(let t): return .hold(t.map { fillText($0, values) })
        case .discard(let t): return .discard(t.map { fillText($0, values) })
        case .dunno, .ok: return action
        }
    }

    static func fillText(_ text: String, _ values: [String: String]) -> String {
        guard text.contains("{") else { return text }
        var out = ""
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}"),
                  let value = values[String(rest[rest.index(after: open)..<close])] else {
                out.append("{")
                rest = rest[rest.index(after: open)...]
                continue
            }
            out += value
            rest = rest[rest.index(after: close)...]
        }
        out += rest
        return out
    }

    /// The header this outcome adds, without "PREPEND "; nil when headers are off.
    public func header(for outcome: SPFOutcome) -> String? {
        switch settings.header {
        case .none: return nil
        case .receivedSPF: return SPFHeader.receivedSPF(outcome, receiver: settings.receiver)
        case .authenticationResults: return SPFHeader.authenticationResults(outcome, authservID: settings.authservID)
        }
    }

    func log(_ evaluated: SPFEvaluated, _ verdict: Verdict, _ logger: Logger) {
        for outcome in [evaluated.helo, evaluated.mailfrom].compactMap({ $0 }) {
            verifier.shared.metrics.results[outcome.result]?.increment()
            logger.debug("spf result=\(outcome.result.rawValue) identity=\(outcome.query.identity.rawValue) domain=\(LogEscaping.field(outcome.query.domain)) client=\(LogEscaping.field(outcome.query.clientAddress)) mechanism=\(LogEscaping.field(outcome.mechanism ?? "-")) problem=\(LogEscaping.field(outcome.problem ?? "-")) lookups=\(outcome.lookups) elapsed_ms=\(outcome.elapsed.nanoseconds / 1_000_000)")
        }
    }
}

/// The outcomes that decide one message.
struct SPFEvaluated: Sendable {
    var helo: SPFOutcome?
    var mailfrom: SPFOutcome?
}

/// Received-SPF (RFC 7208 §9.1) and Authentication-Results (RFC 8601) header lines. The
/// values come from the SMTP client and its DNS: they are quoted here and the response
/// encoder removes control characters.
public enum SPFHeader {
    public static func comment(_ outcome: SPFOutcome, receiver: String) -> String {
        let who = commentSafe(outcome.query.identity == .helo ? outcome.query.helo : outcome.query.checkedMailbox)
        let ip = commentSafe(outcome.query.clientAddress)
        let domainOf = outcome.query.identity == .helo ? "domain \(who)" : "domain of \(who)"
        let text: String
        switch outcome.result {
        case .pass: text = "\(domainOf) designates \(ip) as permitted sender"
        case .fail: text = "\(domainOf) does not designate \(ip) as permitted sender"
        case .softfail: text = "\(domainOf) does not designate \(ip) as permitted sender (transitioning)"
        case .neutral: text = "\(ip) is neither permitted nor denied by \(domainOf)"
        case .none: text = "\(domainOf) does not designate permitted sender hosts"
        case .permerror: text = "permanent error in processing \(domainOf)"
        case .temperror: text = "temporary error in processing \(domainOf)"
        }
        return "\(receiver): \(text)"
    }

    public static func receivedSPF(_ outcome: SPFOutcome, receiver: String) -> String {
        var line = "Received-SPF: \(outcome.result.rawValue) (\(comment(outcome, receiver: receiver)))"
        line += " client-ip=\(value(outcome.query.clientAddress));"
        line += " envelope-from=\(quoted(outcome.query.checkedMailbox));"
        if !outcome.query.helo.isEmpty { line += " helo=\(value(outcome.query.helo));" }
        line += " receiver=\(value(receiver));"
        line += " identity=\(outcome.query.identity.rawValue);"
        if let mechanism = outcome.mechanism { line += " mechanism=\(quoted(mechanism));" }
        return line
    }

    public static func authenticationResults(_ outcome: SPFOutcome, authservID: String) -> String {
        let property = outcome.query.identity == .helo
            ? "smtp.helo=\(value(outcome.query.helo))"
            : "smtp.mailfrom=\(value(outcome.query.checkedMailbox))"
        return "Authentication-Results: \(authservID); spf=\(outcome.result.rawValue) \(property)"
    }

    /// A dot-atom stays as it is; anything else becomes a quoted-string.
    static func value(_ text: String) -> String {
        let atom = !text.isEmpty && text.allSatisfy { c in
            c.isASCII && (c.isLetter || c.isNumber || "!#$%&'*+-/=?^_`{|}~.@:".contains(c))
        } && !text.hasPrefix(".") && !text.hasSuffix(".")
        return atom ? text : quoted(text)
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for c in text {
            if c == "\"" || c == "\\" { out.append("\\") }
            out.append(c)
        }
        return out + "\""
    }

    /// Text inside a header comment: no parentheses or backslashes to unbalance it.
    static func commentSafe(_ text: String) -> String {
        String(text.map { "()\\".contains($0) ? "_" : $0 })
    }
}

/// Futures by key, bounded and expiring, so that concurrent requests for the same key wait
/// on one evaluation. Also remembers a once-only flag per key (the header of a message).
final class SPFFutureCache<Value: Sendable>: @unchecked Sendable {
    struct Entry {
        let future: EventLoopFuture<Value>
        let expires: NIODeadline
        let serial: UInt64
        var flag: Bool
    }

    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    /// Insertion order (all entries have the same lifetime, so also expiry order).
    private var order: [(String, UInt64)] = []
    private var head = 0
    private var serial: UInt64 = 0
    let capacity: Int
    let lifetime: TimeAmount

    /// Lookups answered from the cache and lookups that started an evaluation.
    let hits: Counter
    let misses: Counter

    init(capacity: Int, lifetime: TimeAmount, name: String = "instance") {
        self.capacity = capacity
        self.lifetime = lifetime
        hits = Counter(label: "backstop_spf_result_cache_total", dimensions: [("cache", name), ("result", "hit")])
        misses = Counter(label: "backstop_spf_result_cache_total", dimensions: [("cache", name), ("result", "miss")])
    }

    var count: Int { lock.withLock { entries.count } }

    /// The cached future for `key`, or a new one from `start`; `first` says which.
    func future(for key: String, on eventLoop: any EventLoop, start: () -> EventLoopFuture<Value>) -> (EventLoopFuture<Value>, first: Bool) {
        guard capacity > 0, lifetime > .zero else { return (start(), true) }
        let now = NIODeadline.now()
        let (future, promise) = lock.withLock { () -> (EventLoopFuture<Value>, EventLoopPromise<Value>?) in
            if let entry = entries[key], entry.expires > now { return (entry.future, nil) }
            // Drop expired entries from the old end, and the oldest live ones when full.
            while head < order.count {
                let (old, oldSerial) = order[head]
                guard let entry = entries[old], entry.serial == oldSerial else { head += 1; continue }
                guard entry.expires <= now || entries.count >= capacity else { break }
                entries[old] = nil
                head += 1
            }
            if head > 1024 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
            serial += 1
            let promise = eventLoop.makePromise(of: Value.self)
            entries[key] = Entry(future: promise.futureResult, expires: now + lifetime, serial: serial, flag: false)
            order.append((key, serial))
            return (promise.futureResult, promise)
        }
        // Started outside the lock: `start` may complete at once and call back into us.
        guard let promise else {
            hits.increment()
            return (future, false)
        }
        misses.increment()
        promise.completeWith(start())
        return (future, true)
    }

    /// True the first time it is asked for `key` (while the entry lives), false after.
    func claimFlag(_ key: String) -> Bool {
        lock.withLock {
            guard var entry = entries[key] else { return true }
            if entry.flag { return false }
            entry.flag = true
            entries[key] = entry
            return true
        }
    }

    func remove(_ key: String, ifSame future: EventLoopFuture<Value>) {
        lock.withLock {
            if let entry = entries[key], entry.future === future { entries[key] = nil }
        }
    }
}
