// What a policy-delegation connection does with a request: ask the engine in force on this
// event loop, then count the decision, log its line (as log.decisions says) and encode the
// access(5) answer. The connection's framing, order and timers are ConnectionHandler's.

import BackstopCore
import NIOCore

/// A class: the connection hands it around on every request (a struct of three references
/// was three retains per copy).
final class PolicyResponder: Sendable {
    let state: ServerState
    let loopEngine: LoopEngine

    /// What the checks see of this connection: its loop, the logger and the state of the
    /// message it is on.
    let scope: CheckScope

    init(state: ServerState, loopEngine: LoopEngine) {
        self.state = state
        self.loopEngine = loopEngine
        scope = CheckScope(eventLoop: loopEngine.deadlines.eventLoop, logger: state.logger, message: ConnectionMessage())
    }

    /// On `loopEngine.eventLoop`, the connection's loop; `now`: when the request was taken up.
    func decide(_ request: PolicyRequest, now: NIODeadline) -> Answer<Decision> {
        loopEngine.engine.decide(request, deadlines: loopEngine.deadlines, scope: scope, now: now)
    }

    /// The connection is closed (on its loop).
    func ended() {
        scope.message?.ended()
    }

    func failed(_ request: PolicyRequest, _ error: any Error) -> Decision {
        state.logger.error("engine failed: \(error)")
        return Decision(action: .dunno, check: nil, reason: "internal_error")
    }

    func write(_ request: PolicyRequest, _ decision: Decision, elapsedNanos: Int64, into buffer: inout ByteBuffer) {
        record(request, decision, elapsedNanos: elapsedNanos, suffix: "")
        ResponseEncoder.encode(decision.action, for: request, into: &buffer)
        // The message has its once-per-message header only now that an answer carries it.
        decision.headerOnce?.markSent()
    }

    /// A decision whose client closed the connection before it was made (Postfix timed out,
    /// or went away): counted and logged like any other, with `connection_closed=yes`, since
    /// its checks have acted (a rate-limit hit taken); a header it carried is still due.
    func unsent(_ request: PolicyRequest, _ decision: Decision, elapsedNanos: Int64) {
        record(request, decision, elapsedNanos: elapsedNanos, suffix: " connection_closed=yes")
    }

    private func record(_ request: PolicyRequest, _ decision: Decision, elapsedNanos: Int64, suffix: String) {
        state.metrics.record(request: request, decision: decision, elapsedNanos: elapsedNanos)
        loopEngine.count(decision)
        // The line is only built when the log level keeps it (swift-log's autoclosure).
        if loopEngine.logs(decision) { state.logger.info("\(DecisionLog.line(request, decision, elapsedNanos: elapsedNanos))\(suffix)") }
    }
}
