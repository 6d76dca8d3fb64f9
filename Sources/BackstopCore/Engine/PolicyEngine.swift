// Runs the checks configured for a request's protocol_state, in order, under one
// deadline. The first verdict that is not "no opinion" wins; a PREPEND from an earlier
// check is kept when the later ones have no opinion. Test mode turns refusals into WARN.
// This file decides; it neither parses nor writes to the network.

import NIOCore
import Logging
import Metrics

/// The final answer for a request, with what is needed to log it.
public struct Decision: Sendable {
    public var action: PolicyAction
    /// The check that decided, or nil when no check had an opinion.
    public var check: String?
    public var reason: String
    /// When test mode softened a refusal: the answer that would have been sent.
    public var wouldHave: PolicyAction?
    public var deadlineExpired: Bool = false

    public init(action: PolicyAction, check: String?, reason: String, wouldHave: PolicyAction? = nil, deadlineExpired: Bool = false) {
        self.action = action
        self.check = check
        self.reason = reason
        self.wouldHave = wouldHave
        self.deadlineExpired = deadlineExpired
    }
}

public enum EngineResult: Sendable {
    case immediate(Decision)
    case pending(EventLoopFuture<Decision>)
}

public final class PolicyEngine: Sendable {
    public let stages: [ProtocolState: [any Check]]
    public let testMode: Bool
    public let deadline: TimeAmount
    /// Every check by name, for reuse across reloads and for the CLI.
    public let checks: [String: any Check]

    /// Per-check latency histograms, only when metrics are served (reading the clock per
    /// check is then worth it).
    let timers: [String: Metrics.Timer]

    public init(stages: [ProtocolState: [any Check]], testMode: Bool = false, deadline: TimeAmount = .seconds(5),
                allChecks: [String: any Check] = [:], timeChecks: Bool = false) {
        self.stages = stages
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
        self.timers = timers
    }

    /// Decides `request`. Runs synchronously as far as the checks allow.
    public func decide(_ request: PolicyRequest, eventLoop: any EventLoop, logger: Logger) -> EngineResult {
        let checks = stages[request.protocolState] ?? []
        var state = Accumulator()
        let context = CheckContext(eventLoop: eventLoop, deadline: .now() + deadline, logger: logger)
        var index = 0
        while index < checks.count {
            let check = checks[index]
            index += 1
            switch evaluate(check, request, context) {
            case .done(let verdict):
                if let decision = state.add(verdict, from: check, engineTestMode: testMode) {
                    return .immediate(decision)
                }
            case .pending(let future):
                return .pending(continueAsync(future, check: check, remaining: checks[index...],
                                              state: state, request: request, context: context))
            }
        }
        return .immediate(state.final())
    }

    /// Runs one check, timing it when metrics are on.
    private func evaluate(_ check: any Check, _ request: PolicyRequest, _ context: CheckContext) -> CheckResult {
        guard let timer = timers[check.name] else { return check.evaluate(request, context: context) }
        let started = NIODeadline.now()
        let result = check.evaluate(request, context: context)
        switch result {
        case .done: timer.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
        case .pending(let future):
            future.whenComplete { _ in timer.recordNanoseconds((NIODeadline.now() - started).nanoseconds) }
        }
        return result
    }

    private func continueAsync(
        _ future: EventLoopFuture<Verdict>, check: any Check, remaining: ArraySlice<any Check>,
        state: Accumulator, request: PolicyRequest, context: CheckContext
    ) -> EventLoopFuture<Decision> {
        let promise = context.eventLoop.makePromise(of: Decision.self)
        let answered = LoopFlag()
        let timer = context.eventLoop.scheduleTask(deadline: context.deadline) {
            guard !answered.value else { return }
            answered.value = true
            var expired = state
            var decision = expired.add(check.failVerdict.expired(check.name), from: check, engineTestMode: self.testMode)
                ?? expired.final()
            decision.deadlineExpired = true
            promise.succeed(decision)
        }
        future.hop(to: context.eventLoop).whenComplete { result in
            timer.cancel()
            guard !answered.value else { return }  // the deadline already answered
            answered.value = true
            var next = state
            let verdict: Verdict
            switch result {
            case .success(let v): verdict = v
            case .failure(let error):
                context.logger.warning("check failed", metadata: ["check": "\(check.name)", "error": "\(error)"])
                verdict = check.failVerdict.failed(check.name)
            }
            if let decision = next.add(verdict, from: check, engineTestMode: self.testMode) {
                promise.succeed(decision)
                return
            }
            // Carry on with the checks after the one that was waited for.
            var index = remaining.startIndex
            while index < remaining.endIndex {
                let later = remaining[index]
                index += 1
                switch self.evaluate(later, request, context) {
                case .done(let v):
                    if let decision = next.add(v, from: later, engineTestMode: self.testMode) {
                        promise.succeed(decision)
                        return
                    }
                case .pending(let f):
                    promise.completeWith(self.continueAsync(f, check: later, remaining: remaining[index...],
                                                            state: next, request: request, context: context))
                    return
                }
            }
            promise.succeed(next.final())
        }
        return promise.futureResult
    }

    /// Collects verdicts in check order and says when one is final.
    struct Accumulator: Sendable {
        var prepend: (Verdict, String)?
        var warning: (Verdict, String, PolicyAction)?
        /// The first check that had no opinion but said why (e.g. "spf=pass cached"), for the log.
        var quiet: (String, String)?

        mutating func add(_ verdict: Verdict, from check: any Check, engineTestMode: Bool) -> Decision? {
            switch verdict.action {
            case .dunno:
                if quiet == nil && !verdict.reason.isEmpty { quiet = (check.name, verdict.reason) }
                return nil
            case .prepend:
                if prepend == nil { prepend = (verdict, check.name) }
                return nil
            case let action where action.isRefusal && (engineTestMode || check.testMode):
                if warning == nil {
                    let text = "backstop test mode: \(check.name) would answer: \(ResponseEncoder.actionText(action))"
                    warning = (Verdict(.warn(text), reason: verdict.reason), check.name, action)
                }
                return nil
            default:
                return Decision(action: verdict.action, check: check.name, reason: verdict.reason)
            }
        }

        func final() -> Decision {
            if let (verdict, name, would) = warning {
                return Decision(action: verdict.action, check: name, reason: verdict.reason, wouldHave: would)
            }
            if let (verdict, name) = prepend {
                return Decision(action: verdict.action, check: name, reason: verdict.reason)
            }
            if let (name, reason) = quiet {
                return Decision(action: .dunno, check: name, reason: reason)
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

/// A flag touched only on one event loop (the timer and the completion both run there).
final class LoopFlag: @unchecked Sendable {
    var value = false
}
