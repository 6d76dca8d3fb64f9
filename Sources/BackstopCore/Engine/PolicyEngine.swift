// Runs the checks configured for a request's protocol_state, in order, under one
// deadline. The first verdict that is not "no opinion" wins; a header due from an earlier
// check is added when no later one refuses, and also when a refusal is only logged (test
// mode), so test mode never costs a message its Received-SPF. Without a header, test mode
// turns refusals into WARN. This file decides; it neither parses nor writes to the network.

import NIOCore
import Logging
import Metrics

public final class PolicyEngine: Sendable {
    public let stages: [ProtocolState: [any Check]]
    /// `stages` by `ProtocolState.index`, so a request costs no dictionary lookup.
    let stageList: [[any Check]]
    /// Each stage's checks' latency histograms, in the same order as `stageList`: only when
    /// metrics are served (reading the clock per check is then worth it); nil otherwise.
    let stageTimers: [[Metrics.Timer?]]
    public let testMode: Bool
    public let deadline: TimeAmount
    /// Every check by name, for reuse across reloads and for the CLI.
    public let checks: [String: any Check]

    /// Whether decisions carry their trail (what each check said), which only the decision
    /// log line reads: false when the configuration's logging writes no such line (a level
    /// above info, or log.decisions = "none"); a reload that changes either builds a new engine.
    /// (A reload that lowers the level to info logs the few decisions the old engine makes
    /// until every loop has the new one without their checks' fields.)
    let keepsTrail: Bool

    public init(stages: [ProtocolState: [any Check]], testMode: Bool = false, deadline: TimeAmount = PolicySettings.defaultDeadline,
                allChecks: [String: any Check] = [:], timeChecks: Bool = false, keepsTrail: Bool = true) {
        self.keepsTrail = keepsTrail
        self.stages = stages
        stageList = ProtocolState.allCases.map { stages[$0] ?? [] }
        self.testMode = testMode
        self.deadline = deadline
        var byName = allChecks
        for list in stages.values { for check in list { byName[check.name] = check } }
        self.checks = byName
        var timers: [String: Metrics.Timer] = [:]
        if timeChecks {
            for name in byName.keys {
                timers[name] = Metrics.Timer(label: "backstop_check_duration_seconds", dimensions: [("check", name)],
                                             preferredDisplayUnit: .seconds)
            }
        }
        stageTimers = stageList.map { checks in checks.map { timers[$0.name] } }
    }

    /// Decides `request` on `deadlines.eventLoop`, whose queue watches the deadline when a
    /// check answers later. Runs synchronously as far as the checks allow. `message`: the
    /// state of the message the request's connection is on (see ConnectionMessage).
    /// `now`: when the request was taken up (the caller's clock reading).
    public func decide(_ request: PolicyRequest, deadlines: DeadlineQueue, logger: Logger,
                       message: ConnectionMessage? = nil, now: NIODeadline = .now()) -> Answer<Decision> {
        decide(request, deadlines: deadlines, scope: CheckScope(eventLoop: deadlines.eventLoop, logger: logger, message: message),
               now: now)
    }

    /// The same, for a connection that made its `scope` once (on `deadlines.eventLoop`).
    public func decide(_ request: PolicyRequest, deadlines: DeadlineQueue, scope: CheckScope, now: NIODeadline) -> Answer<Decision> {
        let stage = request.protocolState.index
        let context = CheckContext(scope: scope, deadline: now + deadline, now: now)
        var state = Accumulator(keepsTrail: keepsTrail)
        switch run(stage, from: 0, &state, request, context) {
        case .decided(let decision):
            return .now(decision)
        case .waiting(let future, let check, let next, let state):
            return .later(wait(for: future, from: check, then: next, stage, state, request, context, deadlines))
        }
    }

    private enum Step {
        case decided(Decision)
        /// `check` answers later; the checks from index `next` on come after it.
        case waiting(EventLoopFuture<Verdict>, check: any Check, next: Int, Accumulator)
    }

    /// The one loop over the checks: runs them from `index` until one decides or one answers
    /// later. `state` is added to in place (a copy goes only into `.waiting`).
    private func run(_ stage: Int, from index: Int, _ state: inout Accumulator, _ request: PolicyRequest,
                     _ context: CheckContext) -> Step {
        let checks = stageList[stage]
        let timers = stageTimers[stage]
        var index = index
        while index < checks.count {
            let check = checks[index]
            let timer = timers[index]
            index += 1
            switch evaluate(check, timer, request, context) {
            case .now(let verdict):
                if let decision = state.add(verdict, from: check, engineTestMode: testMode) { return .decided(decision) }
            case .later(let future):
                return .waiting(future, check: check, next: index, state)
            }
        }
        return .decided(state.final())
    }

    /// Runs one check, timing it when metrics are on (`timer`).
    private func evaluate(_ check: any Check, _ timer: Metrics.Timer?, _ request: PolicyRequest, _ context: CheckContext) -> Answer<Verdict> {
        guard let timer else { return check.evaluate(request, context: context) }
        let started = NIODeadline.now()
        let result = check.evaluate(request, context: context)
        switch result {
        case .now: timer.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
        case .later(let future):
            future.whenComplete { _ in timer.recordNanoseconds((NIODeadline.now() - started).nanoseconds) }
        }
        return result
    }

    /// Waits for a check that answers later, under the request's deadline, then carries on.
    /// `entry` is the request's place in the deadline queue when it already waited on an
    /// earlier check (it keeps that place: its deadline is the same).
    private func wait(for future: EventLoopFuture<Verdict>, from check: any Check, then next: Int, _ stage: Int,
                      _ state: Accumulator, _ request: PolicyRequest, _ context: CheckContext,
                      _ deadlines: DeadlineQueue, watching entry: DeadlineQueue.Entry? = nil) -> EventLoopFuture<Decision> {
        let promise = context.eventLoop.makePromise(of: Decision.self)
        let expire = {
            var expired = state
            var decision = expired.add(check.failVerdict.expired(check.name), from: check, engineTestMode: self.testMode)
                ?? expired.final()
            decision.deadlineExpired = true
            promise.succeed(decision)
        }
        let watched: DeadlineQueue.Entry
        if let entry {
            entry.expire = expire  // on the loop, while the entry is still waiting
            watched = entry
        } else {
            watched = deadlines.watch(context.deadline, expire: expire)
        }
        future.hop(to: context.eventLoop).whenComplete { result in
            guard watched.isWaiting else { return }  // the deadline already answered
            let verdict: Verdict
            switch result {
            case .success(let v): verdict = v
            case .failure(let error):
                context.logger.warning("check failed", metadata: ["check": "\(check.name)", "error": "\(error)"])
                verdict = check.failVerdict.failed(check.name)
            }
            var after = state
            if let decision = after.add(verdict, from: check, engineTestMode: self.testMode) {
                watched.answer()
                promise.succeed(decision)
                return
            }
            switch self.run(stage, from: next, &after, request, context) {
            case .decided(let decision):
                watched.answer()
                promise.succeed(decision)
            case .waiting(let later, let laterCheck, let laterNext, let laterState):
                promise.completeWith(self.wait(for: later, from: laterCheck, then: laterNext, stage, laterState, request, context,
                                               deadlines, watching: watched))
            }
        }
        return promise.futureResult
    }

    /// Collects verdicts in check order and says when one is final. Lean, because it is made,
    /// moved and destroyed on every request: the common notes (the first header due, the
    /// first check that said why it had no opinion) keep the check itself (one reference;
    /// its name is read only for the decision) and its reason; the rare ones (a WARN or INFO,
    /// a refusal test mode softened) live in one box, copied before a change when shared
    /// (an accumulator copied into a waiting check's callbacks stays its own).
    struct Accumulator: Sendable {
        /// The first header due, the check it came from and that check's reason.
        var header: DueHeader?
        var headerCheck: (any Check)?
        var headerReason = ""
        /// The first check that had no opinion but said why (e.g. "spf=pass cached"), for the log.
        var quietCheck: (any Check)?
        var quietReason = ""
        var notes: Notes?
        var trail = CheckTrail()
        let keepsTrail: Bool

        /// What only some requests have.
        final class Notes: @unchecked Sendable {
            /// The first refusal test mode turned into a WARN: that WARN, its check and the refusal.
            var warning: (Verdict, String, PolicyAction)?
            /// The first WARN or INFO a check is set to answer, and its check.
            var notice: (Verdict, String)?

            init(warning: (Verdict, String, PolicyAction)? = nil, notice: (Verdict, String)? = nil) {
                self.warning = warning
                self.notice = notice
            }
        }

        init(keepsTrail: Bool) {
            self.keepsTrail = keepsTrail
        }

        /// The first header due, with the check it came from and that check's reason.
        private mutating func keepHeader(_ due: DueHeader, from check: any Check, reason: String) {
            header = due
            headerCheck = check
            headerReason = reason
        }

        /// `notes`, unshared, to change.
        private mutating func ownNotes() -> Notes {
            if notes != nil, isKnownUniquelyReferenced(&notes!) { return notes! }
            let own = Notes(warning: notes?.warning, notice: notes?.notice)
            notes = own
            return own
        }

        mutating func add(_ verdict: Verdict, from check: any Check, engineTestMode: Bool) -> Decision? {
            if keepsTrail { trail.append(check: check.name, reason: verdict.reason) }
            if header == nil, let due = verdict.header { keepHeader(due, from: check, reason: verdict.reason) }
            switch verdict.action {
            case .dunno:
                if quietCheck == nil && !verdict.reason.isEmpty {
                    quietCheck = check
                    quietReason = verdict.reason
                }
                return nil
            case .prepend(let line):
                if header == nil { keepHeader(DueHeader(line: line), from: check, reason: verdict.reason) }
                return nil
            case .warn, .info:
                // Postfix logs these and goes on to its next restriction (access(5)): so do the
                // checks after this one. A refusal after it decides (and one test mode softened
                // is reported as such); otherwise it is the answer.
                if notes?.notice == nil { ownNotes().notice = (verdict, check.name) }
                return nil
            case let action where action.withholdsMail && (engineTestMode || check.testMode):
                if notes?.warning == nil {
                    let text = "backstop test mode: \(check.name) would answer: \(ResponseEncoder.actionText(action))"
                    ownNotes().warning = (Verdict(.warn(text), reason: verdict.reason), check.name, action)
                }
                return nil
            default:
                // A refusal (or another final action) decides; a header due is not added.
                var decision = Decision(action: verdict.action, check: check.name, reason: verdict.reason)
                if keepsTrail { decision.trail = trail }
                return decision
            }
        }

        func final() -> Decision {
            // Without a trail the decision goes out as made (changing it copied it first).
            guard keepsTrail else { return finalAnswer() }
            var decision = finalAnswer()
            decision.trail = trail
            return decision
        }

        private func finalAnswer() -> Decision {
            // A WARN or INFO is what Postfix is asked to log: it is the answer, and a header due
            // waits for the message's next answer (one answer carries one action), unless test
            // mode softened a refusal, which is reported first.
            let warning = notes?.warning
            if warning == nil, let (verdict, name) = notes?.notice {
                return Decision(action: verdict.action, check: name, reason: verdict.reason)
            }
            if let due = header {
                // The header is added even when test mode turned a refusal into a log line.
                if let (verdict, warned, would) = warning {
                    return Decision(action: .prepend(due.line), check: warned, reason: verdict.reason, wouldHave: would,
                                    headerOnce: due.once)
                }
                return Decision(action: .prepend(due.line), check: headerCheck?.name, reason: headerReason, headerOnce: due.once)
            }
            if let (verdict, name, would) = warning {
                return Decision(action: verdict.action, check: name, reason: verdict.reason, wouldHave: would)
            }
            if let quietCheck {
                return Decision(action: .dunno, check: quietCheck.name, reason: quietReason)
            }
            return Decision(action: .dunno, check: nil, reason: "no_opinion")
        }
    }
}

extension Verdict {
    func expired(_ check: String) -> Verdict {
        Verdict(action, reason: "deadline_expired" + (reason.isEmpty ? "" : " " + reason))
    }
    func failed(_ check: String) -> Verdict {
        Verdict(action, reason: "check_failed" + (reason.isEmpty ? "" : " " + reason))
    }
}
