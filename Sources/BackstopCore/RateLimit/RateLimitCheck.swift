// The "ratelimit" check: for each rule that counts at the request's protocol_state and
// applies to it, one hit on the rule's key. Every rule must admit; when one refuses, the hits
// the earlier rules of the same request took are given back, so a refused request consumes
// nothing. A store that cannot answer (a shared store down or slow) makes the rule answer
// its fail action (default: no opinion, so mail flows), and the failure is logged and counted.
// This file decides; counting is in the stores and the arithmetic in GCRA.

import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public final class RateLimitCheck: RetirableCheck, ReloadableCheck, Sendable {
    public let name = "ratelimit"
    public let testMode: Bool
    public let failVerdict: Verdict
    public let store: any CounterStore
    let instances: RecentInstances
    let storeIdentity: String
    /// Files the store's settings read at every reload.
    let storeFiles: [String]
    let rules: [Runtime]
    /// Rule indices by `ProtocolState.index`.
    private let byState: [[Int]]
    private let memory: MemoryCounterStore?
    private let logger: Logger
    /// While a shared store is down every request fails: one line per second at most.
    private let failureLog = LogThrottle(interval: .seconds(1))

    /// A rule with its identity and its metrics, made once per configuration. A class: the
    /// request path passes it around, and a reference costs one retain, not one per field.
    final class Runtime: Sendable {
        let rule: RateLimitRule
        let identity: RateRuleIdentity
        let hits: Counter
        let refusals: Counter
        let failures: Counter
        let keys: Gauge
        /// The rule's overrides table, watched; nil when the rule has none.
        let overrides: WatchedTable<RateOverridesSource>?

        init(rule: RateLimitRule, identity: RateRuleIdentity, hits: Counter, refusals: Counter, failures: Counter, keys: Gauge,
             overrides: WatchedTable<RateOverridesSource>?) {
            self.rule = rule
            self.identity = identity
            self.hits = hits
            self.refusals = refusals
            self.failures = failures
            self.keys = keys
            self.overrides = overrides
        }
    }

    /// `overrides`: the loaded overrides tables by rule name (RateLimitSettings.makeCheck
    /// loads them); a rule that names a file but has none here uses its own limit.
    public init(settings: RateLimitSettings, store: any CounterStore, instances: RecentInstances = RecentInstances(),
                overrides: [String: WatchedTable<RateOverridesSource>] = [:], logger: Logger = Logger(label: "backstop.ratelimit")) {
        self.testMode = settings.testMode
        self.failVerdict = Verdict(settings.failAction, reason: "ratelimit_store_unavailable")
        self.store = store
        self.instances = instances
        self.storeIdentity = settings.storeIdentity
        if case .backend(_, let backend) = settings.store { storeFiles = backend.files } else { storeFiles = [] }
        self.memory = store as? MemoryCounterStore
        self.logger = logger
        self.rules = settings.rules.map { rule in
            let dims = [("rule", rule.name)]
            return Runtime(rule: rule, identity: rule.identity,
                           hits: Counter(label: "backstop_ratelimit_hits_total", dimensions: dims),
                           refusals: Counter(label: "backstop_ratelimit_refusals_total", dimensions: dims),
                           failures: Counter(label: "backstop_ratelimit_store_failures_total", dimensions: dims),
                           keys: Gauge(label: "backstop_ratelimit_keys", dimensions: dims),
                           overrides: overrides[rule.name])
        }
        var byState = [[Int]](repeating: [], count: ProtocolState.allCases.count)
        for (index, runtime) in rules.enumerated() { byState[runtime.rule.state.index].append(index) }
        self.byState = byState
        var gauges: [RateRuleIdentity: Gauge] = [:]
        for runtime in rules { gauges[runtime.identity] = runtime.keys }
        store.publishKeyCounts(to: gauges)
    }

    public var ruleNames: [String] { rules.map(\.rule.name) }

    // MARK: - Evaluation

    /// Hits admitted so far for this request that a later rule's refusal would give back
    /// (the last rule's is not kept: no rule comes after it), and messages to remember.
    private struct Progress {
        /// The first hit kept, and those after it: the first without an array (an
        /// allocation per request).
        var firstAdmitted: RateHit?
        var moreAdmitted: [RateHit] = []
        var counted: [UInt64] = []
        /// The first answer of a rule over its limit whose action lets the mail through
        /// (WARN, INFO, PREPEND, DUNNO, OK), or of such a fail action: the rules after it
        /// are still asked, and this is the answer when none of them refuses.
        var notice: Verdict?
    }

    private enum Step: Sendable {
        case decided(Verdict)
        case proceed(Progress)
    }

    public func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        let indices = byState[request.protocolState.index]
        guard !indices.isEmpty else { return .now(.noOpinion()) }
        return run(indices[...], request, context, Progress())
    }

    /// `progress` is consumed: taken over, not copied (each copy took a reference per hit).
    private func run(_ pending: ArraySlice<Int>, _ request: PolicyRequest, _ context: CheckContext,
                     _ progress: consuming Progress) -> Answer<Verdict> {
        var progress = progress
        var pending = pending
        while let index = pending.popFirst() {
            let runtime = rules[index]
            // Only a rule after this one can refuse and give back what this one takes: the
            // last rule's hit is not kept (a kept hit is copied, and destroyed at the end).
            let keep = !pending.isEmpty
            guard let (hit, mark) = prepare(runtime, request) else { continue }
            runtime.hits.increment()
            if let memory {
                // The embedded store answers synchronously: no future on the hot path.
                if let verdict = settle(memory.apply(hit), hit, keep: keep, mark, runtime, request, context, &progress) {
                    return .now(verdict)
                }
                continue
            }
            switch store.hit(hit, eventLoop: context.eventLoop) {
            case .now(let outcome):
                if let verdict = settle(outcome, hit, keep: keep, mark, runtime, request, context, &progress) { return .now(verdict) }
            case .later(let future):
                let rest = pending
                let carried = progress
                let step = future.hop(to: context.eventLoop).map { outcome -> Step in
                    var p = carried
                    if let verdict = self.settle(outcome, hit, keep: keep, mark, runtime, request, context, &p) { return .decided(verdict) }
                    return .proceed(p)
                }.recover { error -> Step in
                    var p = carried
                    if let verdict = self.storeFailed(error, hit, runtime, context, &p) { return .decided(verdict) }
                    return .proceed(p)
                }
                return .later(step.flatMap { step -> EventLoopFuture<Verdict> in
                    switch step {
                    case .decided(let verdict):
                        return context.eventLoop.makeSucceededFuture(verdict)
                    case .proceed(let p):
                        switch self.run(rest, request, context, p) {
                        case .now(let verdict): return context.eventLoop.makeSucceededFuture(verdict)
                        case .later(let future): return future
                        }
                    }
                })
            }
        }
        for mark in progress.counted { instances.remember(mark) }
        return .now(progress.notice ?? .noOpinion())
    }
}

extension RateLimitCheck {
    /// The hit this rule takes for `request`, or nil when the rule does not count it. The second
    /// value marks the message for once-per-instance counting.
    private func prepare(_ runtime: Runtime, _ request: PolicyRequest) -> (RateHit, UInt64?)? {
        let rule = runtime.rule
        guard rule.applies(to: request) else { return nil }
        let cost: Int64
        switch rule.count {
        case .recipient: cost = rule.state == .rcpt ? 1 : Int64(request.recipientCount)
        case .message: cost = 1
        case .bytes: cost = (request.withValueBytes(.size) { Self.decimal($0) } ?? nil) ?? 0
        }
        guard cost > 0 else { return nil }
        var key: [UInt8] = []
        key.reserveCapacity(48)
        guard rule.key.build(from: request, into: &key) else { return nil }
        var parameters = rule.parameters
        if let table = runtime.overrides?.table, let entry = table.lookup(key: key, client: Self.clientAddress(of: rule, request)) {
            switch entry.limit {
            case .exempt: return nil
            case .limit(let override): parameters = override.parameters
            }
        }
        var mark: UInt64?
        if rule.count != .recipient || rule.state != .rcpt {
            // A message is counted once per key, however often the policy is asked about it.
            mark = request.withValueBytes(.instance) { instance -> UInt64? in
                instance.isEmpty ? nil : instances.fingerprint(rule: runtime.identity.fingerprint, instance: instance, key: key)
            } ?? nil
            if let mark, instances.contains(mark) { return nil }
        }
        return (RateHit(rule: runtime.identity, parameters: parameters, key: key, cost: cost, spec: rule.key), mark)
    }

    static func decimal(_ bytes: UnsafeRawBufferPointer) -> Int64? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var value: Int64 = 0
        for byte in bytes {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            value = value * 10 + Int64(byte - 0x30)
        }
        return value
    }

    /// Records an outcome; returns the verdict when the rule refused.
    /// `keep`: an admitted hit is kept for giving back (a later rule may refuse).
    private func settle(_ outcome: GCRAOutcome, _ hit: RateHit, keep: Bool, _ mark: UInt64?, _ runtime: Runtime,
                        _ request: PolicyRequest, _ context: CheckContext, _ progress: inout Progress) -> Verdict? {
        switch outcome {
        case .admitted:
            if keep {
                if progress.firstAdmitted == nil { progress.firstAdmitted = hit } else { progress.moreAdmitted.append(hit) }
            }
            if let mark { progress.counted.append(mark) }
            return nil
        case .refused(let retryAfter):
            runtime.refusals.increment()
            let rule = runtime.rule
            var metadata: Logger.Metadata = [
                "check": "ratelimit",
                "rule": "\(rule.name)",
                "key": "\(rule.key.display(hit.key))",
                "count": "\(rule.count.rawValue)",
                "cost": "\(hit.cost)",
                "limit": "\(rule.limitCount)/\(DurationText.format(.nanoseconds(rule.period)))",
                "burst": "\(hit.parameters.burst)",
            ]
            // The key's override, as its table writes it (looked up again: refusals only).
            if let table = runtime.overrides?.table,
               case .limit(let override)? = table.lookup(key: hit.key, client: Self.clientAddress(of: rule, request))?.limit {
                metadata["limit"] = "override \(override.limitCount)/\(DurationText.format(.nanoseconds(override.period)))"
            }
            if let retryAfter { metadata["retry_after"] = "\(DurationText.approximate(nanoseconds: retryAfter))" }
            else { metadata["over_burst"] = "true" }
            let instance = request.instance
            if !instance.isEmpty { metadata["instance"] = "\(instance)" }
            context.logger.notice("rate limit exceeded", metadata: metadata)
            let verdict = Verdict(rule.action, reason: "ratelimit=\(rule.name)" + (retryAfter == nil ? " over_burst" : ""))
            return decided(verdict, &progress)
        }
    }

    private func storeFailed(_ error: any Error, _ hit: RateHit, _ runtime: Runtime, _ context: CheckContext,
                             _ progress: inout Progress) -> Verdict? {
        runtime.failures.increment()
        let rule = runtime.rule
        let failures = failureLog.note()
        if let failures {
            context.logger.warning("rate-limit store failed, using the fail action", metadata: [
                "check": "ratelimit", "rule": "\(rule.name)", "store": "\(store.kind)",
                "fail_action": "\(rule.failAction.description)",
                "error": "\(error)", "failures": "\(failures)",
            ])
        }
        if rule.failAction.isNoOpinion { return nil }
        return decided(Verdict(rule.failAction, reason: "ratelimit_store_unavailable rule=\(rule.name)"), &progress)
    }

    /// A rule's answer: one that withholds the mail ends the rules, and what this request
    /// took from earlier rules is given back (the message does not go on). One that lets
    /// it through (WARN, say) is kept for the end, and the later rules are still asked:
    /// a warning rule must not switch off the limits after it.
    private func decided(_ verdict: Verdict, _ progress: inout Progress) -> Verdict? {
        guard verdict.action.withholdsMail else {
            if progress.notice == nil { progress.notice = verdict }
            return nil
        }
        giveBack(progress)
        return verdict
    }

    private func giveBack(_ progress: Progress) {
        if let first = progress.firstAdmitted { store.refund(first) }
        for hit in progress.moreAdmitted { store.refund(hit) }
    }
}

// MARK: - Status

public struct RateLimitStatusError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

extension RateLimitCheck {
    /// Describes a key's state for one rule, as `backstop ratelimit status --rule R --key K` shows it.
    /// `key` is the value of the rule's key (a client address is aggregated like a request's); for
    /// a combined key give the values in the rule's order joined by "+". A domain part takes the
    /// domain itself; `<>` is the null sender.
    public func status(rule name: String, key: String) async throws -> String {
        let (runtime, bytes) = try resolve(rule: name, key: key)
        let display = LogEscaping.escape(runtime.rule.key.display(bytes), limit: .max)
        var parameters = runtime.rule.parameters
        var note: String?
        if let table = runtime.overrides?.table, let entry = table.lookup(key: bytes, client: Self.clientAddress(of: runtime.rule, key)) {
            switch entry.limit {
            case .exempt:
                return Self.ruleLine(runtime.rule, store: store.kind) + "\nkey \(display): exempt (\(table.file):\(entry.line))"
            case .limit(let override):
                parameters = override.parameters
                note = "key \(display): override \(override.description) (\(table.file):\(entry.line))"
            }
        }
        let state = try await ask { [store, identity = runtime.identity] in
            try await store.state(rule: identity, key: bytes)
        }
        return ([Self.ruleLine(runtime.rule, store: store.kind)] + (note.map { [$0] } ?? [])
            + [Self.keyLine(parameters, key: display, state: state)]).joined(separator: "\n")
    }

    /// The request's client address, for a rule keyed on it alone (overrides by network).
    private static func clientAddress(of rule: RateLimitRule, _ request: PolicyRequest) -> IPAddress? {
        rule.key.parts == [.clientAddress] ? IPAddress(request.clientAddress) : nil
    }

    /// The client address an administrator named for a client_address rule (the address
    /// itself, or a network's first address), for matching overrides networks.
    private static func clientAddress(of rule: RateLimitRule, _ key: String) -> IPAddress? {
        rule.key.parts == [.clientAddress] ? CIDR(key)?.network : nil
    }

    /// `backstop ratelimit reset`: forgets a key's state, so it has its whole allowance again.
    public func reset(rule name: String, key: String) async throws -> String {
        let (runtime, bytes) = try resolve(rule: name, key: key)
        let held = try await ask { [store, identity = runtime.identity] in
            try await store.reset(rule: identity, key: bytes)
        }
        let raw = runtime.rule.key.display(bytes), display = LogEscaping.escape(raw, limit: .max)
        logger.notice("rate-limit key reset by the administrator", metadata: ["rule": "\(name)", "key": "\(raw)",
                                                                               "held_state": "\(held)"])
        return "rule \(name): key \(display): " + (held ? "state forgotten: all \(runtime.rule.parameters.burst) available again"
                                                        : "no state was held: all \(runtime.rule.parameters.burst) available")
    }

    /// `backstop ratelimit list`: the keys of a rule using most of their allowance.
    public func list(rule name: String, overOnly: Bool, limit: Int) async throws -> String {
        let runtime = try find(rule: name)
        let bound = max(1, min(limit, Self.maxListed))
        let list = try await ask { [store, identity = runtime.identity] in
            try await store.busiest(rule: identity, limit: bound)
        }
        let rule = runtime.rule
        var lines = [Self.ruleLine(rule, store: store.kind)]
        var shown = 0
        let overrides = runtime.overrides?.table
        for entry in list.entries {
            let state = RateKeyState(tat: entry.tat, now: list.now)
            let shownKey = rule.key.display(entry.key)
            // Judged by the limit in force for the key (its override's, when it has one;
            // `status` names the override).
            var parameters = rule.parameters
            if let overrides, case .limit(let override)? = overrides.lookup(key: entry.key, client: Self.clientAddress(of: rule, shownKey))?.limit {
                parameters = override.parameters
            }
            if overOnly, GCRA.available(tat: entry.tat, now: list.now, parameters) > 0 { continue }
            // A key is what a client sent: escaped, so no terminal sequence or line break
            // reaches the screen.
            lines.append(Self.keyLine(parameters, key: LogEscaping.escape(shownKey, limit: .max), state: state))
            shown += 1
        }
        if shown == 0 { lines.append(overOnly ? "no key is over the limit" : "no key holds state") }
        if !list.complete {
            lines.append("(the memory store names only keys that used more than half their allowance or were refused)")
        }
        return lines.joined(separator: "\n")
    }

    /// Most keys `list` shows.
    public static let maxListed = 1_000

    private func find(rule name: String) throws -> Runtime {
        guard let runtime = rules.first(where: { $0.rule.name == name }) else {
            throw RateLimitStatusError(description: "no rule named \"\(LogEscaping.escape(name))\": the rules are "
                + (rules.isEmpty ? "(none)" : rules.map(\.rule.name).joined(separator: ", ")))
        }
        return runtime
    }

    private func resolve(rule name: String, key: String) throws -> (Runtime, [UInt8]) {
        let runtime = try find(rule: name)
        // A key listed by its digest (a shared store's form of a long key) is asked as it is.
        if RateKeySpec.isDigestForm(Array(key.utf8)) { return (runtime, Array(key.utf8)) }
        let spec = runtime.rule.key
        let values: [String]
        switch spec.parts.count == 1 ? .success([key]) : Self.split(combined: key, into: spec.parts) {
        case .success(let split): values = split
        case .failure(let error): throw RateLimitStatusError(description: "rule \(name): \(error.description)")
        }
        switch spec.build(values: values) {
        case .success(let built): return (runtime, built)
        case .failure(let error): throw RateLimitStatusError(description: "rule \(name): \(error.message)")
        }
    }

    /// The values of a combined key as an administrator writes it: joined by "+" in the
    /// rule's order. A value may hold a "+" itself (`alice+news@example.org`): when there are
    /// more "+" than parts and one part alone can hold one (a sender, a recipient, a SASL
    /// name), the extra ones are that part's. When two parts can, a "+" inside a value is
    /// written `\+` (and a backslash `\\`); elsewhere a backslash is an ordinary character
    /// (`EXAMPLE\jdoe`).
    static func split(combined key: String, into parts: [RateKeyPart]) -> Result<[String], RateLimitStatusError> {
        let holders = parts.indices.filter { parts[$0].mayHoldPlus }
        var pieces: [String] = [""]
        if holders.count >= 2 {
            var escaped = false
            for character in key {
                if escaped {
                    pieces[pieces.count - 1].append(character)
                    escaped = false
                } else if character == "\\" {
                    escaped = true
                } else if character == "+" {
                    pieces.append("")
                } else {
                    pieces[pieces.count - 1].append(character)
                }
            }
            if escaped { pieces[pieces.count - 1].append("\\") }
            guard pieces.count <= parts.count else {
                let names = parts.filter(\.mayHoldPlus).map(\.rawValue).joined(separator: " and ")
                return .failure(RateLimitStatusError(description:
                    "the key has more \"+\" than the rule has parts, and \(names) may each hold one: write a \"+\" inside a value as \\+"))
            }
            return .success(pieces)
        }
        pieces = key.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        guard pieces.count > parts.count, let holder = holders.first else { return .success(pieces) }
        let after = parts.count - holder - 1
        let merged = pieces[holder..<(pieces.count - after)].joined(separator: "+")
        return .success(Array(pieces[..<holder]) + [merged] + Array(pieces[(pieces.count - after)...]))
    }

    /// Runs a question to the store: the memory store answers at once, in this task; a shared
    /// store is raced against `statusTimeout`.
    private func ask<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        if memory != nil { return try await body() }
        return try await Self.withinStatusTimeout(store.kind, body)
    }

    /// A status question never waits longer than this for the store (PostgreSQL may be down).
    public static let statusTimeout: TimeAmount = .seconds(5)

    /// Runs `body`, or fails after `statusTimeout` even when `body` does not notice.
    static func withinStatusTimeout<T: Sendable>(_ store: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let promise = loop.makePromise(of: T.self)
        let timer = loop.scheduleTask(in: statusTimeout) {
            promise.fail(RateLimitStatusError(description: "the \(store) store did not answer within \(DurationText.format(statusTimeout))"))
        }
        let work = Task {
            do { promise.succeed(try await body()) } catch { promise.fail(error) }
        }
        defer {
            timer.cancel()
            work.cancel()
        }
        return try await promise.futureResult.get()
    }

    static func describe(_ rule: RateLimitRule, key: String, state: RateKeyState, store: String) -> String {
        ruleLine(rule, store: store) + "\n" + keyLine(rule.parameters, key: key, state: state)
    }

    static func ruleLine(_ rule: RateLimitRule, store: String) -> String {
        "rule \(rule.name): counts \(rule.count.unitName) at \(rule.state.rawValue) by \(rule.key), "
            + "\(rule.limitDescription), one unit back every \(DurationText.approximate(nanoseconds: rule.parameters.emissionInterval)), store \(store)"
    }

    static func keyLine(_ p: GCRAParameters, key: String, state: RateKeyState) -> String {
        let available = GCRA.available(tat: state.tat, now: state.now, p)
        guard let tat = state.tat, tat > state.now else {
            return "key \(key): no state held: all \(p.burst) available"
        }
        // A state kept from a larger limit (a reload, an override added or removed): GCRA.apply
        // reads it as this limit's whole burst used at the key's next hit. The values may come
        // from PostgreSQL, and its clock too: a difference that does not fit is read the same
        // way (as the hit path reads it), never trapped on.
        let (ahead, overflow) = tat.subtractingReportingOverflow(state.now)
        if overflow || ahead > p.tolerance {
            return "key \(key): over the limit: 0 of \(p.burst) available (its state comes from a larger limit: it counts as all \(p.burst) used at the key's next hit, and from then on one comes back every \(DurationText.approximate(nanoseconds: p.emissionInterval)))"
        }
        let full = DurationText.approximate(nanoseconds: ahead)
        if available > 0 {
            return "key \(key): \(available) of \(p.burst) available now; all \(p.burst) again in \(full)"
        }
        // In this order no step overflows: 0 < ahead ≤ tolerance, and the interval ≤
        // tolerance ≤ 2^62 (GCRAParameters), so the result ≤ ahead. (With a period near 146
        // years, tat + interval overflowed.)
        let next = ahead - p.tolerance + p.emissionInterval
        return "key \(key): over the limit: 0 of \(p.burst) available; the next one in \(DurationText.approximate(nanoseconds: next)); all \(p.burst) again in \(full)"
    }

    // MARK: - Retiring

    /// A reload kept or replaced the store (a replaced memory store saved already); a check
    /// whose store nobody takes over saves it now. Overrides tables the successor does not
    /// use stop being watched.
    public func retire(replacedBy successor: (any Check)?) {
        let next = successor as? RateLimitCheck
        if next?.store !== store { memory?.saveState() }
        let kept = next?.rules.compactMap(\.overrides) ?? []
        for runtime in rules {
            if let watched = runtime.overrides, !kept.contains(where: { $0 === watched }) { watched.stopWatching() }
        }
    }

    /// The server stops: the memory store saves its counters.
    public func stop() {
        memory?.saveState()
        for runtime in rules { runtime.overrides?.stopWatching() }
    }

    public var files: [String] { rules.compactMap(\.overrides).flatMap(\.source.files) + storeFiles }

    /// SIGHUP: reads the overrides files again (WatchedTable.reloadAtSignal); the problems
    /// of a broken edit (whose last good version stays in force).
    public func reload() -> [ConfigIssue] {
        rules.compactMap(\.overrides).flatMap { $0.reloadAtSignal() }
    }

    public func putInForce() {
        for runtime in rules { runtime.overrides?.putInForce() }
    }

    /// The overrides tables in use, by rule name (a reload hands them to the new check).
    var overridesTables: [String: WatchedTable<RateOverridesSource>] {
        var tables: [String: WatchedTable<RateOverridesSource>] = [:]
        for runtime in rules { if let watched = runtime.overrides { tables[runtime.rule.name] = watched } }
        return tables
    }
}
