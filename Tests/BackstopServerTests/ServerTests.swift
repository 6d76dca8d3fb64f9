// The server over real sockets: TCP and Unix, many connections, persistent connections,
// protocol errors isolated to their connection, graceful stop, timeouts, limits, reload.

import Testing
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
@testable import BackstopCore
@testable import BackstopServer

@Suite(.serialized) struct ServerTests {
    @Test func answersOverTCP() async throws {
        let s = try await TestServer.start()
        let c = try s.client()
        #expect(try c.ask(rcptRequest) == "action=DUNNO")
        await s.stop()
    }

    @Test func answersOverUnixSocketWithMode() async throws {
        let dir = tempDirectory()
        let path = dir + "/policy.sock"
        let s = try await TestServer.start("[[listen]]\naddress = \"unix:\(path)\"\nmode = \"0600\"\n",
                                           stages: [.rcpt: [RecipientPrefixCheck()]])
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        let c = try PolicyClient(endpoint: .unix(path: path))
        var request = rcptRequest
        request[4] = ("recipient", "bad@example.com")
        #expect(try c.ask(request) == "action=550 5.1.1 no")
        await s.stop()
        #expect(stat(path, &info) != 0, "socket removed on stop")
    }

    @Test func refusesToReplaceARegularFile() async throws {
        let path = tempDirectory() + "/not-a-socket"
        _ = FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8))
        await #expect(throws: ServerError.self) {
            _ = try await TestServer.start("[[listen]]\naddress = \"unix:\(path)\"\n")
        }
        #expect(FileManager.default.contents(atPath: path) == Data("keep me".utf8))
    }

    @Test func connectionStaysOpenAcrossRequests() async throws {
        let s = try await TestServer.start(stages: [.rcpt: [RecipientPrefixCheck()]])
        let c = try s.client()
        for i in 0..<200 {
            var request = rcptRequest
            request[4] = ("recipient", i % 2 == 0 ? "good\(i)@example.com" : "bad\(i)@example.com")
            #expect(try c.ask(request) == (i % 2 == 0 ? "action=DUNNO" : "action=550 5.1.1 no"))
        }
        #expect(s.server.openConnections == 1)
        await s.stop()
    }

    @Test func hundredConcurrentConnections() async throws {
        let s = try await TestServer.start(stages: [.rcpt: [RecipientPrefixCheck()]])
        let endpoint = s.endpoint
        let failures = await withTaskGroup(of: Int.self) { group in
            for n in 0..<100 {
                group.addTask {
                    await Task.detached {
                        var wrong = 0
                        do {
                            let c = try PolicyClient(endpoint: endpoint)
                            for i in 0..<50 {
                                var request = rcptRequest
                                let bad = (n + i) % 3 == 0
                                request[4] = ("recipient", bad ? "bad@x" : "ok@x")
                                if try c.ask(request) != (bad ? "action=550 5.1.1 no" : "action=DUNNO") { wrong += 1 }
                            }
                        } catch { wrong += 1000 }
                        return wrong
                    }.value
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
        await s.stop()
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        let s = try await TestServer.start(stages: [.rcpt: [RecipientPrefixCheck()]])
        let c = try s.client()
        var text = ""
        for i in 0..<40 {
            text += "request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=\(i % 2 == 0 ? "bad" : "ok")\(i)@x\n\n"
        }
        try c.send(Array(text.utf8))
        for i in 0..<40 {
            #expect(try c.readAnswer() == (i % 2 == 0 ? "action=550 5.1.1 no" : "action=DUNNO"))
        }
        await s.stop()
    }

    @Test func malformedRequestClosesOnlyItsConnection() async throws {
        let s = try await TestServer.start()
        let good = try s.client()
        #expect(try good.ask(rcptRequest) == "action=DUNNO")
        let bad = try s.client()
        try bad.send(Array("GET / HTTP/1.1\nHost: x\n\n".utf8))
        #expect(try bad.readAnswer() == nil, "no answer, connection closed")
        let noRequest = try s.client()
        try noRequest.send(Array("sender=a@b\n\n".utf8))
        #expect(try noRequest.readAnswer() == nil)
        #expect(try good.ask(rcptRequest) == "action=DUNNO")
        await s.stop()
    }

    @Test func oversizedLineClosesTheConnection() async throws {
        let s = try await TestServer.start("[protocol]\nmax_line_length = 256\nmax_request_bytes = 1024\n")
        let c = try s.client()
        try c.send(Array("request=smtpd_access_policy\nsender=".utf8) + [UInt8](repeating: 65, count: 5000))
        #expect(try c.readAnswer() == nil)
        await s.stop()
    }

    @Test func gracefulStopAnswersRequestsInFlight() async throws {
        let delay = DelayCheck(delay: .milliseconds(500))
        let s = try await TestServer.start(stages: [.rcpt: [delay]])
        let c = try s.client()
        try c.send(rcptRequest)
        #expect(await delay.waitUntilAsked(1), "the request is under way when the stop begins")
        async let stopped: Void = s.stop()
        let answer = try c.readAnswer()
        #expect(answer == "action=OK")
        await stopped
        #expect(throws: (any Error).self) { try s.client() }
    }

    /// A decision whose client went away before it was made is still counted and logged
    /// (its checks have acted), marked connection_closed=yes.
    @Test func aDecisionForAClosedConnectionIsLogged() async throws {
        let kept = KeptLines()
        let delay = DelayCheck(delay: .milliseconds(300))
        let s = try await TestServer.start(stages: [.rcpt: [delay]], logger: Logger(label: "test") { _ in kept })
        do {
            let c = try s.client()
            try c.send(rcptRequest)
        }  // the client is closed here, at once: before the answer, however late this task resumes
        #expect(await delay.waitUntilAsked(1))
        let end = NIODeadline.now() + .seconds(10)
        func closedLine() -> String? { kept.lines.withLockedValue { $0 }.first { $0.contains("connection_closed=yes") } }
        while closedLine() == nil && NIODeadline.now() < end { try await Task.sleep(for: .milliseconds(20)) }
        let line = try #require(closedLine(), "\(kept.lines.withLockedValue { $0 })")
        #expect(line.contains("action=OK"), "\(line)")
        await s.stop()
    }

    @Test func gracefulStopStopsEveryListenerAtOnce() async throws {
        let slow = DelayCheck(delay: .seconds(60))
        let s = try await TestServer.start("[server]\nshutdown_grace = \"3s\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n",
                                           stages: [.rcpt: [slow]], deadline: .seconds(90))
        let endpoints = s.server.boundAddresses.map { ListenerSettings.parseEndpoint($0)! }
        #expect(endpoints.count == 2)
        // A busy connection on each listener: each closes at shutdown_grace.
        let busy = try endpoints.map { endpoint in
            let c = try PolicyClient(endpoint: endpoint, timeoutSeconds: 10)
            try c.send(rcptRequest)
            return c
        }
        #expect(await slow.waitUntilAsked(2), "both requests are under way when the stop begins")
        // When the server closes each busy connection, read on a thread of its own (a blocking
        // read on the concurrency pool could starve it).
        let closes = busy.map { client in
            let reader = Unchecked(client)
            return Task { () -> (closed: Bool, at: ContinuousClock.Instant) in
                await withCheckedContinuation { continuation in
                    Thread {
                        // nil: the server closed it. An answer or an error (the client's 10 s
                        // timeout) is not a close.
                        let closed = (try? reader.value.readAnswer()) == .some(nil)
                        continuation.resume(returning: (closed, ContinuousClock.now))
                    }.start()
                }
            }
        }
        let started = ContinuousClock.now
        async let stopped: Void = s.stop()
        // The second listener no longer accepts while the first drains (one after the other,
        // it accepted until the first had drained, 3 s). Polled: a loaded machine may take
        // a moment to close it.
        var refused = false
        for _ in 0..<20 where !refused {
            try await Task.sleep(for: .milliseconds(100))
            refused = (try? PolicyClient(endpoint: endpoints[1], timeoutSeconds: 2)) == nil
        }
        #expect(refused, "the second listener still accepted 2 s into the stop")
        await stopped
        // Both graces ran together: the busy connections closed at about the same moment, at
        // shutdown_grace, not one 3 s after the other. (Their difference, not the stop's
        // length, is what is judged: a loaded machine stretches the whole stop.)
        var closed: [ContinuousClock.Instant] = []
        for close in closes {
            let (byServer, at) = await close.value
            #expect(byServer, "a busy connection was not closed by the server")
            closed.append(at)
        }
        let apart = closed.max()! - closed.min()!
        #expect(apart < .milliseconds(1_500), "the busy connections closed \(apart) apart")
        #expect(closed.min()! - started >= .milliseconds(2_500), "a busy connection closed \(closed.min()! - started) into the stop, before shutdown_grace")
        #expect(closed.max()! - started < .seconds(8), "the busy connections closed \(closed.max()! - started) into the stop")
    }

    /// A value sent to another thread by a test that hands it over and does not touch it again.
    struct Unchecked<Value>: @unchecked Sendable {
        let value: Value
        init(_ value: Value) { self.value = value }
    }

    @Test func slowCheckIsCutOffByTheDeadline() async throws {
        let s = try await TestServer.start(stages: [.rcpt: [DelayCheck(delay: .seconds(30))]], deadline: .milliseconds(200))
        let c = try s.client()
        let started = Date()
        #expect(try c.ask(rcptRequest) == "action=DEFER_IF_PERMIT 4.4.3 timed out")
        #expect(Date().timeIntervalSince(started) < 5)
        await s.stop()
    }

    @Test func halfRequestIsCutOffByTheReadTimeout() async throws {
        let s = try await TestServer.start("[server]\nread_timeout = \"300ms\"\n")
        let c = try s.client()
        let started = Date()
        try c.send(Array("request=smtpd_access_policy\nsender=".utf8))
        #expect(try c.readAnswer() == nil)
        #expect(Date().timeIntervalSince(started) < 5)
        await s.stop()
    }

    @Test func idleConnectionIsClosedAfterIdleTimeout() async throws {
        let s = try await TestServer.start("[server]\nidle_timeout = \"1s\"\nread_timeout = \"1s\"\n")
        let c = try s.client()
        #expect(try c.ask(rcptRequest) == "action=DUNNO")
        let started = Date()
        #expect(try c.readAnswer() == nil)
        #expect(Date().timeIntervalSince(started) < 5)
        await s.stop()
    }

    @Test func connectionLimitIsEnforced() async throws {
        let s = try await TestServer.start("[server]\nmax_connections = 2\n")
        let a = try s.client(), b = try s.client()
        #expect(try a.ask(rcptRequest) == "action=DUNNO")
        #expect(try b.ask(rcptRequest) == "action=DUNNO")
        let c = try s.client()
        #expect(try c.ask(rcptRequest) == nil)
        #expect(try a.ask(rcptRequest) == "action=DUNNO")
        await s.stop()
    }

    @Test func allowListRefusesOtherNetworks() async throws {
        let s = try await TestServer.start("[[listen]]\naddress = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\"]\n")
        let c = try s.client()
        #expect(try c.ask(rcptRequest) == nil)
        await s.stop()
        let open = try await TestServer.start("[[listen]]\naddress = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\n")
        #expect(try open.client().ask(rcptRequest) == "action=DUNNO")
        await open.stop()
    }

    @Test func answersOverIPv6Loopback() async throws {
        let s = try await TestServer.start("[[listen]]\naddress = \"[::1]:0\"\n")
        #expect(try s.client().ask(rcptRequest) == "action=DUNNO")
        await s.stop()
    }

    /// A check whose future is already complete is answered (and flushed) from inside the
    /// parser's feed; when the client has gone, that write fails and NIO reads what is
    /// left on the socket at once, re-entering the handler. The server must survive it
    /// (it once stopped on Swift's exclusivity check). The loop is held busy so that the
    /// client has sent everything and closed before its connection is read.
    @Test func aReadDeliveredDuringTheFeedIsFedAfterIt() async throws {
        final class Immediate: Check {
            let name = "immediate", testMode = false, failVerdict = Verdict.noOpinion()
            func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
                if request.recipient.hasPrefix("hold") {
                    Thread.sleep(forTimeInterval: 0.3)  // holds the only event loop
                    return .now(.noOpinion())
                }
                return .later(context.eventLoop.makeSucceededFuture(.noOpinion()))
            }
        }
        let path = tempDirectory() + "/policy.sock"
        let s = try await TestServer.start("[[listen]]\naddress = \"unix:\(path)\"\n[server]\nthreads = 1\n",
                                           stages: [.rcpt: [Immediate()]])
        var hold = rcptRequest
        hold[4] = ("recipient", "hold@example.com")
        let holder = try s.client()
        try holder.send(hold)
        try await Task.sleep(for: .milliseconds(50))
        // Many requests in one go, then gone, while the loop is held.
        let one = rcptRequest.map { "\($0.0)=\($0.1)\n" }.joined() + "\n"
        do {
            let gone = try s.client()
            try gone.send(Array(String(repeating: one, count: 400).utf8))
        }
        #expect(try holder.readAnswer() == "action=DUNNO")
        #expect(try s.client().ask(rcptRequest) == "action=DUNNO", "the server still answers")
        await s.stop()
    }

    /// A check whose future is already complete when it is returned: the handler wrote its
    /// answer and went on to the next request from inside the future's callback, one stack
    /// frame deeper per pipelined request (up to 1,000 of them). The stack in use while the
    /// check runs must not grow with the number of requests a client sends ahead.
    @Test func answersOfCompletedFuturesDoNotNestOnTheStack() async throws {
        final class StackProbe: Check, @unchecked Sendable {
            let name = "probe", testMode = false, failVerdict = Verdict.noOpinion()
            /// The lowest and highest stack address seen in evaluate (on one event loop).
            let span = NIOLockedValueBox<(low: UInt, high: UInt)>((low: UInt.max, high: 0))
            func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
                var marker = 0
                let here = withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
                span.withLockedValue { $0 = (low: min($0.low, here), high: max($0.high, here)) }
                if request.recipient.hasPrefix("slow") {  // the others queue up behind it
                    return .later(context.eventLoop.scheduleTask(in: .milliseconds(200)) { .noOpinion() }.futureResult)
                }
                return .later(context.eventLoop.makeSucceededFuture(.noOpinion()))
            }
        }
        let probe = StackProbe()
        let s = try await TestServer.start("[server]\nthreads = 1\n", stages: [.rcpt: [probe]])
        let one = rcptRequest.map { "\($0.0)=\($0.1)\n" }.joined() + "\n"
        var slow = rcptRequest
        slow[4] = ("recipient", "slow@example.com")
        let client = try s.client()
        try client.send(Array((slow.map { "\($0.0)=\($0.1)\n" }.joined() + "\n" + String(repeating: one, count: 899)).utf8))
        for i in 0..<900 { #expect(try client.readAnswer() == "action=DUNNO", "answer \(i)") }
        let (low, high) = probe.span.withLockedValue { $0 }
        #expect(high - low < 64 << 10, "the stack grew by \(high - low) octets over 900 pipelined requests")
        await s.stop()
    }

    /// docs/security.md: between answers a connection keeps at most 4 KiB of answer buffer.
    /// A burst of pipelined requests answered at once grew it to hundreds of KiB, and that
    /// storage stayed with an idle connection until its next answer.
    @Test func aBurstsAnswerBufferIsNotKept() throws {
        final class LongAnswer: Check {
            let name = "long", testMode = false, failVerdict = Verdict.noOpinion()
            func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
                .now(Verdict(.reject(String(repeating: "x", count: 400)), reason: "x"))
            }
        }
        let loop = EmbeddedEventLoop()
        let config = try Configuration.parse("", file: "test.toml")
        let engine = PolicyEngine(stages: [.rcpt: [LongAnswer()]])
        let state = ServerState(logger: Logger(label: "test"), config: config, engine: engine, group: loop, metrics: ServerMetrics())
        let loopEngine = LoopEngine(eventLoop: loop, engine: engine, generation: 0, decisions: .none)
        let handler = ConnectionHandler(state: state, decoder: FrameDecoder(RequestParser()),
                                        responder: .policy(PolicyResponder(state: state, loopEngine: loopEngine)), peer: "test")
        let channel = EmbeddedChannel(handler: handler, loop: loop)
        defer { _ = try? channel.finish() }
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let one = rcptRequest.map { "\($0.0)=\($0.1)\n" }.joined() + "\n"
        try channel.writeInbound(ByteBuffer(string: String(repeating: one, count: 600)))
        channel.pipeline.fireChannelReadComplete()
        var written = 0
        while let answer = try channel.readOutbound(as: ByteBuffer.self) { written += answer.readableBytes }
        #expect(written > 600 * 400, "all 600 answers were written: \(written) octets")
        #expect(handler.heldAnswerCapacity <= ConnectionHandler.keptOutCapacity, "kept \(handler.heldAnswerCapacity) octets")
        // The next answer is written as before.
        try channel.writeInbound(ByteBuffer(string: one))
        channel.pipeline.fireChannelReadComplete()
        let next = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(next.getString(at: next.readerIndex, length: 17) == "action=REJECT xxx")
    }

    @Test func hostileTextNeverForgesASecondAnswer() async throws {
        final class Hostile: Check {
            let name = "hostile", testMode = false, failVerdict = Verdict.noOpinion()
            func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
                .now(Verdict(.reject("explanation\n\naction=OK\n\n"), reason: "x"))
            }
        }
        let s = try await TestServer.start(stages: [.rcpt: [Hostile()]])
        let c = try s.client()
        #expect(try c.ask(rcptRequest) == "action=REJECT explanation  action=OK")
        #expect(try c.ask(rcptRequest) == "action=REJECT explanation  action=OK")
        await s.stop()
    }
}

/// A decision line whose client-made values are all long runs of escapes stays within what
/// syslog daemons keep (rsyslog: 8 KiB), with what was decided in it: each value is cut at
/// LogEscaping.maxFieldOctets.
@Test func aDecisionLineOfHostileValuesKeepsItsVerdict() {
    let hostile = String(repeating: "\u{202E}", count: 600)
    let request = PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", "192.0.2.1"),
                                 ("sender", hostile + "@x"), ("recipient", hostile + "@y"), ("helo_name", hostile),
                                 ("sasl_username", hostile), ("instance", "1.2.3")])
    let decision = Decision(action: .reject("5.7.1 no"), check: "recipients", reason: "unknown_recipient")
    let line = DecisionLog.line(request, decision, elapsedNanos: 1_000)
    #expect(line.utf8.count < 8_000, "\(line.utf8.count) octets")
    // (The text but its status code is left out: with a 1,800-octet recipient Postfix's reply
    // line has no room.)
    let verdict = line.contains(" check=recipients action=\"REJECT 5.7.1\" reason=unknown_recipient")
    #expect(verdict, "\(line.suffix(200))")
}
