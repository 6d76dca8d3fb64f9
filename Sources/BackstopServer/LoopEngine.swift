// One holder of the current PolicyEngine per event loop, and of the loop's queue of
// request deadlines (kept across reloads). Connections read it without a lock because
// only its own loop touches it; a reload hands every loop the new engine.

import BackstopCore
import NIOCore

/// @unchecked Sendable: `current`, `generation` and the counts are touched only on
/// `eventLoop` (`replace` hops there first). Swift's run-time exclusivity check is off for
/// the fields read or written on every request (three pairs of run-time calls per request):
/// each access is a plain read or a single write that calls nothing, so none can overlap.
final class LoopEngine: @unchecked Sendable {
    let eventLoop: any EventLoop
    /// Deadlines of this loop's requests that wait for a check.
    let deadlines: DeadlineQueue
    @exclusivity(unchecked) private var current: PolicyEngine
    private(set) var generation: Int
    /// log.decisions of the configuration in force; only on `eventLoop`.
    @exclusivity(unchecked) private(set) var decisions: LogSettings.Decisions

    init(eventLoop: any EventLoop, engine: PolicyEngine, generation: Int, decisions: LogSettings.Decisions) {
        self.eventLoop = eventLoop
        self.deadlines = DeadlineQueue(eventLoop: eventLoop)
        self.current = engine
        self.generation = generation
        self.decisions = decisions
    }

    /// Whether `decision` gets a line under log.decisions; only on `eventLoop`.
    func logs(_ decision: Decision) -> Bool {
        switch decisions {
        case .all: true
        case .refusals: decision.action.withholdsMail || decision.wouldHave != nil
        case .none: false
        }
    }

    /// Only on `eventLoop`.
    var engine: PolicyEngine {
        eventLoop.assertInEventLoop()
        return current
    }

    /// Counts since the last summary, by ServerMetrics.actionClasses, plus deadline expiries.
    @exclusivity(unchecked) private(set) var counts = [Int](repeating: 0, count: ServerMetrics.actionClasses.count)
    @exclusivity(unchecked) private(set) var expiries = 0

    /// Only on `eventLoop`.
    func count(_ decision: Decision) {
        counts[ServerMetrics.actionClass(decision.action)] += 1
        if decision.deadlineExpired { expiries += 1 }
    }

    /// Only on `eventLoop`: returns and resets the counts.
    func takeCounts() -> ([Int], Int) {
        defer {
            for i in counts.indices { counts[i] = 0 }
            expiries = 0
        }
        return (counts, expiries)
    }

    /// Succeeds once the loop decides with `engine`.
    func replace(with engine: PolicyEngine, generation: Int, decisions: LogSettings.Decisions) -> EventLoopFuture<Void> {
        eventLoop.submit {
            self.current = engine
            self.generation = generation
            self.decisions = decisions
        }
    }
}
