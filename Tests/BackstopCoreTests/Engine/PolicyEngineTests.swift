// The engine's ordering rules, test mode and deadline, with small checks defined here.

import Testing
import NIOCore
import NIOEmbedded
import NIOPosix
import Logging
@testable import BackstopCore

final class FixedCheck: Check {
    let name: String
    let testMode: Bool
    let failVerdict: Verdict
    let verdict: Verdict
    init(name: String, testMode: Bool = false,
         failVerdict: Verdict = Verdict(.deferIfPermit("4.4.3 check timed out"), reason: "timeout"), verdict: Verdict) {
        self.name = name
        self.testMode = testMode
        self.failVerdict = failVerdict
        self.verdict = verdict
    }
    func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> { .now(verdict) }
}

/// Answers after `delay` on the event loop; counts how often it was asked.
final class SlowCheck: Check, @unchecked Sendable {
    let name = "slow"
    let testMode = false
    let failVerdict = Verdict(.deferIfPermit("4.4.3 slow check timed out"), reason: "timeout")
    let delay: TimeAmount
    let verdict: Verdict
    init(delay: TimeAmount, verdict: Verdict) { self.delay = delay; self.verdict = verdict }
    func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        let verdict = self.verdict
        return .later(context.eventLoop.scheduleTask(in: delay) { verdict }.futureResult)
    }
}

private let rcpt = PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("recipient", "a@b")])
private let logger = Logger(label: "test")

private func decide(_ engine: PolicyEngine, on loop: EmbeddedEventLoop = EmbeddedEventLoop()) -> Decision? {
    switch engine.decide(rcpt, deadlines: DeadlineQueue(eventLoop: loop), logger: logger) {
    case .now(let d): return d
    case .later: return nil
    }
}

@Suite struct PolicyEngineTests {
    /// WARN and INFO only ask Postfix to log (access(5)): the checks after them still run. A
    /// rate limit set to WARN once ended the list, so the recipients check after it never
    /// refused an unknown recipient, and SPF's header was lost.
    @Test func aWarningDoesNotEndTheChecks() {
        let warn = FixedCheck(name: "ratelimit", verdict: Verdict(.warn("over the limit"), reason: "ratelimit=per_client"))
        let info = FixedCheck(name: "bounces", verdict: Verdict(.info("looked at"), reason: "bounces=info"))
        let unknown = FixedCheck(name: "recipients", verdict: Verdict(.reply(code: 550, enhanced: "5.1.1", text: "User unknown"), reason: "unknown_recipient"))
        let header = FixedCheck(name: "spf", verdict: Verdict(.prepend("Received-SPF: pass"), reason: "spf=pass"))
        let refused = decide(PolicyEngine(stages: [.rcpt: [header, warn, unknown]]))
        #expect(refused?.action == .reply(code: 550, enhanced: "5.1.1", text: "User unknown") && refused?.check == "recipients")
        #expect(refused?.trail.entries.map(\.check) == ["spf", "ratelimit", "recipients"])
        // The warning is the answer (what Postfix is asked to log); a header due waits for
        // the message's next answer: it is not marked as added.
        let withHeader = decide(PolicyEngine(stages: [.rcpt: [header, warn, info]]))
        #expect(withHeader?.action == .warn("over the limit") && withHeader?.headerOnce == nil, "\(String(describing: withHeader))")
        let warned = decide(PolicyEngine(stages: [.rcpt: [info, warn, FixedCheck(name: "x", verdict: .noOpinion())]]))
        #expect(warned?.action == .info("looked at") && warned?.check == "bounces", "the first warning is the answer")
        // Test mode reports a refusal after a warning as it would be in force.
        let trial = FixedCheck(name: "recipients", testMode: true, verdict: unknown.verdict)
        let tested = decide(PolicyEngine(stages: [.rcpt: [warn, trial]]))
        #expect(tested?.wouldHave == unknown.verdict.action && tested?.check == "recipients", "\(String(describing: tested))")
        #expect(tested?.action.keyword == "WARN")
    }

    @Test func theTrailNamesEveryCheckThatRanInOrder() {
        let engine = PolicyEngine(stages: [.rcpt: [
            FixedCheck(name: "recipients", verdict: .noOpinion("known_recipient")),
            FixedCheck(name: "spf", verdict: Verdict(.prepend("Received-SPF: pass"), reason: "spf=pass")),
            FixedCheck(name: "ratelimit", verdict: .noOpinion()),
        ]])
        let trail = decide(engine)?.trail.entries.map { "\($0.check)=\($0.outcome)" }
        #expect(trail == ["recipients=known_recipient", "spf=pass", "ratelimit=ok"])
        let refused = PolicyEngine(stages: [.rcpt: [
            FixedCheck(name: "spf", verdict: .noOpinion("spf=skipped(trusted_network)")),
            FixedCheck(name: "ratelimit", verdict: Verdict(.deferTemporarily("4.7.1 slow down"), reason: "ratelimit=per_client")),
            FixedCheck(name: "bounces", verdict: .noOpinion()),
        ]])
        let refusedTrail = decide(refused)?.trail.entries.map { "\($0.check)=\($0.outcome)" }
        #expect(refusedTrail == ["spf=skipped(trusted_network)", "ratelimit=per_client"], "checks after the deciding one did not run")
    }

    /// Only the decision line reads the trail: an engine whose configuration writes no such
    /// line (a level above info, or log.decisions = "none") keeps none; one that does keeps it.
    @Test func theTrailIsKeptOnlyWhenDecisionsAreLogged() throws {
        func trail(_ log: String) throws -> [String]? {
            let config = try Configuration.parse("""
                [policy]
                rcpt = ["bounces"]
                [bounces]
                no_reply_addresses = ["noreply@example.org"]
                [log]
                \(log)
                """, file: "t.toml")
            return decide(try EngineBuilder.build(config, previous: nil, logger: logger))?.trail.entries.map(\.check)
        }
        #expect(try trail("level = \"info\"") == ["bounces"])
        #expect(try trail("level = \"debug\"\ndecisions = \"refusals\"") == ["bounces"])
        #expect(try trail("level = \"warning\"") == [])
        #expect(try trail("level = \"info\"\ndecisions = \"none\"") == [])
    }

    @Test func firstDecisionWins() {
        let engine = PolicyEngine(stages: [.rcpt: [
            FixedCheck(name: "a", verdict: .noOpinion()),
            FixedCheck(name: "b", verdict: Verdict(.reply(code: 550, enhanced: "5.1.1", text: "unknown"), reason: "unknown")),
            FixedCheck(name: "c", verdict: Verdict(.ok, reason: "c")),
        ]])
        let d = decide(engine)
        #expect(d?.check == "b")
        #expect(d?.action == .reply(code: 550, enhanced: "5.1.1", text: "unknown"))
    }

    @Test func prependIsKeptWhenLaterChecksHaveNoOpinion() {
        let engine = PolicyEngine(stages: [.rcpt: [
            FixedCheck(name: "spf", verdict: Verdict(.prepend("Received-SPF: pass"), reason: "spf=pass")),
            FixedCheck(name: "later", verdict: .noOpinion()),
        ]])
        #expect(decide(engine)?.action == .prepend("Received-SPF: pass"))
        let refused = PolicyEngine(stages: [.rcpt: [
            FixedCheck(name: "spf", verdict: Verdict(.prepend("Received-SPF: pass"), reason: "spf=pass")),
            FixedCheck(name: "rate", verdict: Verdict(.deferTemporarily("4.7.1 slow down"), reason: "rate")),
        ]])
        #expect(decide(refused)?.action == .deferTemporarily("4.7.1 slow down"))
    }

    @Test func onlyTheRequestsStageRuns() {
        let engine = PolicyEngine(stages: [.data: [FixedCheck(name: "x", verdict: Verdict(.reject("no"), reason: "x"))]])
        #expect(decide(engine)?.action == .dunno)
    }

    @Test func testModeTurnsRefusalsIntoWarn() {
        let check = FixedCheck(name: "recipients", testMode: true,
                               verdict: Verdict(.reply(code: 550, enhanced: "5.1.1", text: "User unknown"), reason: "unknown"))
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        let d = decide(engine)
        #expect(d?.action == .warn("backstop test mode: recipients would answer: 550 5.1.1 User unknown"))
        #expect(d?.wouldHave == .reply(code: 550, enhanced: "5.1.1", text: "User unknown"))
        let global = PolicyEngine(stages: [.rcpt: [FixedCheck(name: "r", verdict: Verdict(.reject("x"), reason: "x"))]], testMode: true)
        #expect(decide(global)?.action == .warn("backstop test mode: r would answer: REJECT x"))
        // DISCARD and HOLD lose or hold the mail: softened like refusals (they were enforced).
        for action in [PolicyAction.discard("over the limit"), .hold(nil)] {
            let engine = PolicyEngine(stages: [.rcpt: [FixedCheck(name: "r", verdict: Verdict(action, reason: "x"))]], testMode: true)
            #expect(decide(engine)?.action == .warn("backstop test mode: r would answer: \(ResponseEncoder.actionText(action))"))
        }
        // Test mode never softens an accept.
        let accept = PolicyEngine(stages: [.rcpt: [FixedCheck(name: "r", verdict: Verdict(.ok, reason: "x"))]], testMode: true)
        #expect(decide(accept)?.action == .ok)
    }

    @Test func deadlineGivesTheCheckFailAction() async throws {
        // A group of its own: other tests may keep the shared loops busy.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let engine = PolicyEngine(stages: [.rcpt: [SlowCheck(delay: .seconds(5), verdict: Verdict(.ok, reason: "late"))]],
                                  deadline: .milliseconds(100))
        guard case .later(let future) = engine.decide(rcpt, deadlines: DeadlineQueue(eventLoop: loop), logger: logger) else {
            Issue.record("expected a pending decision"); return
        }
        let started = NIODeadline.now()
        // Time the answer where it is produced: a busy test run may resume this task late.
        let (d, answeredAt) = try await future.map { ($0, NIODeadline.now()) }.get()
        #expect(answeredAt - started < .seconds(2))
        #expect(d.deadlineExpired)
        #expect(d.action == .deferIfPermit("4.4.3 slow check timed out"))
        try await group.shutdownGracefully()
    }

    @Test func aRequestWaitingOnTwoChecksKeepsOneDeadline() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let engine = PolicyEngine(stages: [.rcpt: [
            SlowCheck(delay: .milliseconds(20), verdict: Verdict(.prepend("X-First: yes"), reason: "first")),
            SlowCheck(delay: .seconds(5), verdict: Verdict(.ok, reason: "late")),
        ]], deadline: .milliseconds(300))
        let deadlines = DeadlineQueue(eventLoop: loop)
        let started = NIODeadline.now()
        guard case .later(let future) = engine.decide(rcpt, deadlines: deadlines, logger: logger) else {
            Issue.record("expected a pending decision"); return
        }
        let (d, answeredAt) = try await future.map { ($0, NIODeadline.now()) }.get()
        #expect(answeredAt - started < .seconds(2))
        #expect(d.deadlineExpired)
        // The second check's deadline answer: it follows the first check's verdict.
        #expect(d.trail.entries.map(\.reason) == ["first", "deadline_expired timeout"], "\(d.trail.entries)")
        #expect(d.action == .deferIfPermit("4.4.3 slow check timed out"))
        let left = try await loop.submit { deadlines.count }.get()
        #expect(left == 0, "the request left the queue once")
        try await group.shutdownGracefully()
    }

    @Test func asyncCheckThenLaterChecksRun() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let engine = PolicyEngine(stages: [.rcpt: [
            SlowCheck(delay: .milliseconds(10), verdict: Verdict(.prepend("X-Slow: yes"), reason: "slow")),
            FixedCheck(name: "after", verdict: Verdict(.reject("after"), reason: "after")),
        ]])
        guard case .later(let future) = engine.decide(rcpt, deadlines: DeadlineQueue(eventLoop: loop), logger: logger) else {
            Issue.record("expected a pending decision"); return
        }
        let d = try await future.get()
        #expect(d.action == .reject("after"))
        #expect(!d.deadlineExpired)
        try await group.shutdownGracefully()
    }
}
