// ConnectionState by value: queueing and one answer at a time, back-pressure, the
// read and idle timeouts, graceful stop and protocol errors, without a socket or a clock.

import Testing
import NIOCore
@testable import BackstopCore
@testable import BackstopServer

@Suite struct ConnectionStateTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let request = ConnectionRequest.policy(PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT")]))

    func fresh() -> ConnectionState {
        ConnectionState(now: start, idleTimeout: .seconds(330), readTimeout: .seconds(30))
    }

    @Test func answersOneRequestAtATimeInOrder() {
        var c = fresh()
        _ = c.received(request, now: start)
        _ = c.received(request, now: start)
        let r1 = c.nextRequest()
        #expect(r1 != nil)
        let r2 = c.nextRequest()
        #expect(r2 == nil, "the second waits until the first is answered")
        c.answered(now: start)
        let r3 = c.nextRequest()
        #expect(r3 != nil)
        c.answered(now: start)
        let r4 = c.nextRequest()
        #expect(r4 == nil)
    }

    /// A request that arrives while nothing is owed or waiting is answered at once (and then
    /// owes its answer); one that arrives meanwhile waits in the queue, after it.
    @Test func aRequestIsAnsweredAtOnceOnlyWhenNothingIsOwedOrWaiting() {
        var c = fresh()
        let idle = c.answersAtOnce(now: start)
        #expect(idle)
        #expect(c.answering)
        let owing = c.answersAtOnce(now: start)
        #expect(!owing, "an answer is owed")
        let arrival = c.received(request, now: start)
        #expect(arrival == .queued)
        let early = c.nextRequest()
        #expect(early == nil, "the queued one waits for the owed answer")
        c.answered(now: start)
        let waiting = c.answersAtOnce(now: start)
        #expect(!waiting, "one is waiting: it goes first")
        let queued = c.nextRequest()
        #expect(queued != nil)
        c.answered(now: start)
        let again = c.answersAtOnce(now: start)
        #expect(again)
        c.answered(now: start)
        _ = c.quiesce()
        let stopping = c.answersAtOnce(now: start)
        #expect(!stopping, "a stopping connection answers nothing new")
    }

    @Test func readingPausesWhileFullOrNotWritableButNotWhileAnswering() {
        var c = fresh()
        let r5 = c.mayRead(writable: true)
        #expect(r5)
        let r6 = c.mayRead(writable: false)
        #expect(!r6)
        let r7 = c.resumeRead(writable: true)
        #expect(r7, "a held read resumes once writable")
        let r8 = c.resumeRead(writable: true)
        #expect(!r8, "only once")
        _ = c.received(request, now: start)
        _ = c.nextRequest()
        let r9 = c.mayRead(writable: true)
        #expect(r9, "an answer being decided does not hold reading")
        c.answered(now: start)
        for _ in 0..<ConnectionState.maxQueued { _ = c.received(request, now: start) }
        let r11 = c.mayRead(writable: true)
        #expect(!r11, "\(ConnectionState.maxQueued) requests queued")
        _ = c.nextRequest()
        let r10 = c.resumeRead(writable: true)
        #expect(r10, "one taken from a full queue: the held read resumes")
    }

    @Test func readTimeoutRunsFromTheFirstByteOfAnUnfinishedRequest() {
        var c = fresh()
        c.requestBegan(now: start + .seconds(10))
        let r12 = c.timerFired(now: start + .seconds(30))
        #expect(r12 == .rearm(start + .seconds(40)))
        let r13 = c.timerFired(now: start + .seconds(40))
        #expect(r13 == .close(.read))
        #expect(c.phase == .closed)
    }

    @Test func aRequestStartedWhileAnotherIsAnsweredKeepsItsReadTimeout() {
        var c = fresh()
        _ = c.received(request, now: start)
        _ = c.nextRequest()
        c.requestBegan(now: start + .seconds(10))
        let r30 = c.timerFired(now: start + .seconds(20))
        #expect(r30 == .rearm(start + .seconds(40)), "due 30 s after its first byte, answer owed or not")
        let r31 = c.timerFired(now: start + .seconds(40))
        #expect(r31 == .close(.read))
    }

    @Test func aConnectionFinishingWithAnAnswerOwedIsNotClosedByTheReadTimeout() {
        var c = fresh()
        _ = c.received(request, now: start)
        _ = c.nextRequest()
        c.requestBegan(now: start + .seconds(10))
        let closeNow = c.protocolError()
        #expect(!closeNow, "an answer is owed")
        let r32 = c.timerFired(now: start + .seconds(45))
        #expect(r32 != .close(.read), "the answer in flight is still written")
    }

    @Test func aClientFarAheadOfItsAnswersIsRefused() {
        var c = fresh()
        _ = c.received(request, now: start)
        _ = c.nextRequest()
        for n in 0..<ConnectionState.maxPipelined {
            guard c.received(request, now: start) == .queued else { Issue.record("refused at \(n)"); return }
        }
        let over = c.received(request, now: start)
        #expect(over == .overflow, "\(ConnectionState.maxPipelined) already wait")
    }

    @Test func idleTimeoutRunsFromTheLastAnswer() {
        var c = ConnectionState(now: start, idleTimeout: .seconds(10), readTimeout: .seconds(30))
        _ = c.received(request, now: start + .seconds(5))
        _ = c.nextRequest()
        let r14 = c.timerFired(now: start + .seconds(100))
        #expect(r14 == .rearm(start + .seconds(110)), "nothing expires while an answer is owed")
        c.answered(now: start + .seconds(100))
        let r15 = c.timerFired(now: start + .seconds(105))
        #expect(r15 == .rearm(start + .seconds(110)))
        let r16 = c.timerFired(now: start + .seconds(110))
        #expect(r16 == .close(.idle))
    }

    @Test func gracefulStopClosesAtOnceWhenIdleElseAfterTheAnswer() {
        var idle = fresh()
        let r17 = idle.quiesce()
        #expect(r17)
        var busy = fresh()
        _ = busy.received(request, now: start)
        _ = busy.received(request, now: start)
        _ = busy.nextRequest()
        let r18 = busy.quiesce()
        #expect(!r18, "an answer is owed")
        let r19 = busy.mayRead(writable: true)
        #expect(!r19, "nothing more is read")
        let late = busy.received(request, now: start)
        #expect(late == .dropped, "a request that arrives after the stop is not answered (and is logged)")
        busy.answered(now: start)
        let r20 = busy.nextRequest()
        #expect(r20 != nil, "what was queued before the stop is still answered")
        busy.answered(now: start)
        let r21 = busy.nextRequest()
        #expect(r21 == nil)
        let r22 = busy.closeIfFinished()
        #expect(r22)
        #expect(busy.phase == .closed)
    }

    @Test func protocolErrorDropsTheQueueButWritesTheOwedAnswer() {
        var c = fresh()
        _ = c.received(request, now: start)
        _ = c.received(request, now: start)
        _ = c.nextRequest()
        let r23 = c.protocolError()
        #expect(!r23)
        _ = c.received(request, now: start)
        c.answered(now: start)
        let r24 = c.nextRequest()
        #expect(r24 == nil, "queued and later requests are dropped")
        let r25 = c.closeIfFinished()
        #expect(r25)
    }
}
