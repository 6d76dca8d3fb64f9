// The channel handler of one Postfix connection, policy or socketmap alike: feeds the
// bytes it reads to its FrameDecoder, hands each request to its responder in arrival order (one at
// a time, as Postfix sends them), writes the encoded answers, and carries out what
// ConnectionState decides about reading, timeouts and closing (graceful stop arrives as
// NIO's ChannelShouldQuiesceEvent). What a request means, and how its answer is counted,
// logged and encoded, is the responder's (PolicyResponder, SocketmapResponder).

import BackstopCore
import Logging
import NIOCore

/// What answers a connection's requests: the listener's protocol. An enum, not a generic
/// parameter: NIO calls handlers through protocol witnesses, which would run a generic
/// handler unspecialised (generic metadata lookups on every request; measured at +17,000
/// instructions per request).
enum ConnectionResponder {
    case policy(PolicyResponder)
    case socketmap(SocketmapResponder)
}

final class ConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let state: ServerState
    private let responder: ConnectionResponder
    private let peer: String
    private let shutdownGrace: TimeAmount
    // The per-request state below is read and written several times per request, always on
    // the channel's event loop, by calls that do not call back into the handler; Swift's
    // run-time exclusivity check on each access cost ~900 instructions per request
    // (callgrind, spf-peers), so it is off for these fields alone. The decoder keeps it: the
    // one way NIO re-enters the handler, a read delivered during a feed, must never reach
    // the decoder twice (`feeding` diverts it to `reentered`), and the check is what makes
    // ServerTests.aReadDeliveredDuringTheFeedIsFedAfterIt fail if it ever did.
    @exclusivity(unchecked) private var connection: ConnectionState
    private var decoder: FrameDecoder
    /// Set at a protocol error: the connection is closing and what else arrives is dropped.
    @exclusivity(unchecked) private var decodeFailed = false
    /// True while `decoder` is being fed. NIO can deliver a read in the middle of it: an
    /// answer flushed from inside the feed (a check whose future was already complete)
    /// whose write fails makes NIO read what is left on the socket at once. Those bytes wait
    /// in `reentered` and are fed, in order, when the outer feed returns (the decoder is
    /// never entered twice).
    @exclusivity(unchecked) private var feeding = false
    @exclusivity(unchecked) private var reentered: ByteBuffer?
    /// The most kept in `reentered`. It fills only when an answer could not be written
    /// (NIO then reads what the socket holds), so beyond this the connection is closed.
    static let maxReentered = 65_536
    private var timer: Scheduled<Void>?
    private var graceTimer: Scheduled<Void>?
    /// The connection's answers not yet flushed: empty until the first answer (an idle
    /// connection holds no room for one), then kept. Once NIO has written it, the handler
    /// holds its only reference again and the next answer reuses its storage (cleared, not
    /// reallocated); while a write is still pending, clearing makes a new one (copy on
    /// write), so a pending write is never changed. A burst of answers that grew it past
    /// `keptOutCapacity` is let go as it is flushed: an idle connection keeps at most that.
    @exclusivity(unchecked) private var outBuffer = ByteBufferAllocator().buffer(capacity: 0)
    @exclusivity(unchecked) private var outPending = false
    /// True while answerQueued registers its callback on a check's future, and whether that
    /// callback ran then (the future was already complete). One answer is owed at a time, so
    /// one pair serves the connection.
    @exclusivity(unchecked) private var registering = false
    @exclusivity(unchecked) private var ranInline = false
    /// Whether a request that arrived during a graceful stop was logged (once per connection).
    private var loggedDrop = false
    /// The most `outBuffer` keeps between answers (octets).
    static let keptOutCapacity = 4_096
    /// The channel's isActive and isWritable as the events that change them said, so that a
    /// request does not ask the channel (each `context.channel` query took references and
    /// NIO's own exclusivity checks, ~300 instructions per request). NIO fires
    /// channelInactive from inside its close, before any later answer could be written.
    @exclusivity(unchecked) private var active = false
    @exclusivity(unchecked) private var writable = true

    init(state: ServerState, decoder: FrameDecoder, responder: ConnectionResponder, peer: String) {
        self.state = state
        self.decoder = decoder
        self.responder = responder
        self.peer = peer
        let settings = state.settings.withLockedValue { $0 }
        self.shutdownGrace = settings.shutdownGrace
        self.connection = ConnectionState(now: .now(), idleTimeout: settings.idleTimeout, readTimeout: settings.readTimeout)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        active = context.channel.isActive
        writable = context.channel.isWritable
    }

    func channelActive(context: ChannelHandlerContext) {
        active = true
        schedule(context: context, at: connection.firstTimer)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        connection.closed()
        if case .policy(let responder) = responder { responder.ended() }
        timer?.cancel()
        graceTimer?.cancel()
        timer = nil
        graceTimer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decodeFailed else { return }
        var bytes = unwrapInboundIn(data)
        guard !feeding else {
            guard (reentered?.readableBytes ?? 0) + bytes.readableBytes <= Self.maxReentered else {
                state.logger.debug("closing: more than \(Self.maxReentered) octets arrived while an answer could not be written: peer=\(LogEscaping.field(peer))")
                reentered = nil
                decodeFailed = true
                connection.closed()
                context.close(promise: nil)
                return
            }
            if reentered == nil { reentered = bytes } else { reentered!.writeBuffer(&bytes) }
            return
        }
        feeding = true
        defer { feeding = false }
        var next: ByteBuffer? = bytes
        while let current = next, !decodeFailed {
            do {
                try decoder.feed(current) { frame in
                    switch frame {
                    case .request(let request):
                        guard !decodeFailed else { return }
                        let now = NIODeadline.now()
                        // The usual case, one request and then its answer: no queue in between.
                        if connection.answersAtOnce(now: now) { return answerQueued(context: context, now: now, first: request) }
                        switch connection.received(request, now: now) {
                        case .queued:
                            answerQueued(context: context, now: now)
                        case .dropped:
                            // Once per connection: a client that pipelines gets one line, not one per request.
                            if !loggedDrop {
                                loggedDrop = true
                                state.logger.info("request not answered: the connection closes after its owed answer (server stopping): peer=\(LogEscaping.field(peer))")
                            }
                        case .overflow:
                            decodeFailed = true
                            errorCaught(context: context, error: ProtocolError.tooManyPipelined(limit: ConnectionState.maxPipelined))
                        }
                    case .started:
                        connection.requestBegan(now: .now())
                    }
                }
            } catch {
                // A limit crossed earlier in this feed has already closed or is closing it.
                if !decodeFailed { errorCaught(context: context, error: error) }
                decodeFailed = true
            }
            next = reentered
            reentered = nil
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushAnswers(context: context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if connection.mayRead(writable: writable) { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writable = context.channel.isWritable
        if connection.resumeRead(writable: writable) { context.read() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ProtocolError {
            state.metrics.protocolErrors.increment()
            state.warnings.warn(.protocolError, state.logger, "protocol error, closing connection without an answer: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
            if connection.protocolError() { close(context: context) }
            return
        }
        state.logger.debug("connection error: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
        connection.closed()
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        if connection.quiesce() { return close(context: context) }
        // Busy: it closes when the answer owed is written, or at shutdown_grace at the latest.
        let peer = self.peer, logger = state.logger
        graceTimer = context.eventLoop.assumeIsolated().scheduleTask(in: shutdownGrace) {
            guard context.channel.isActive else { return }
            logger.warning("closing a connection still busy after server.shutdown_grace: peer=\(LogEscaping.field(peer))")
            self.connection.closed()
            context.close(promise: nil)
        }
    }

    // MARK: answering

    /// `now`: a clock reading just taken, for the first request answered (the one that has
    /// just arrived); the others read the clock when they are taken up. `first`: a request
    /// that arrived while the connection owed nothing (ConnectionState.answersAtOnce), answered
    /// before the queue is looked at.
    private func answerQueued(context: ChannelHandlerContext, now: NIODeadline? = nil, first: ConnectionRequest? = nil) {
        var now = now
        var first = first
        while let request = first.take() ?? connection.nextRequest() {
            let started = now ?? NIODeadline.now()
            now = nil
            // The decoder and the responder are installed together from one listener setting.
            // (One switch per enum, not over a tuple of both: that copied each, retains and all.)
            switch responder {
            case .policy(let responder):
                guard case .policy(let request) = consume request else { preconditionFailure("a policy connection got a socketmap request") }
                switch responder.decide(request, now: started) {
                case .now(let decision):
                    write(started: started, context: context) { responder.write(request, decision, elapsedNanos: $0, into: &$1) }
                case .later(let future):
                    // A future already complete runs this callback at once, inside this
                    // loop: the loop then goes on to the next request itself, rather than
                    // the callback nesting one more answerQueued per request queued.
                    registering = true
                    ranInline = false
                    future.assumeIsolated().whenComplete { result in
                        let decision: Decision
                        switch result {
                        case .success(let d): decision = d
                        case .failure(let error): decision = responder.failed(request, error)
                        }
                        self.write(started: started, context: context,
                                   closed: { responder.unsent(request, decision, elapsedNanos: $0) }) {
                            responder.write(request, decision, elapsedNanos: $0, into: &$1)
                        }
                        if self.registering { self.ranInline = true; return }
                        self.answerQueued(context: context)
                        self.flushAnswers(context: context)
                    }
                    registering = false
                    if ranInline { continue }
                    return
                }
            case .socketmap(let responder):
                guard case .socketmap(let request) = consume request else { preconditionFailure("a socketmap connection got a policy request") }
                let reply = responder.answer(request)
                write(started: started, context: context) { responder.write(request, reply, elapsedNanos: $0, into: &$1) }
            }
        }
        if connection.closeIfFinished() { return close(context: context) }
        if connection.resumeRead(writable: writable) { context.read() }
    }

    /// Marks the owed answer as given and, if the channel is still open, lets `encode` count,
    /// log and append it (given the nanoseconds since `started`); if the client has gone
    /// meanwhile, `closed` counts and logs what it was not sent.
    private func write(started: NIODeadline, context: ChannelHandlerContext, closed: (Int64) -> Void = { _ in },
                       _ encode: (Int64, inout ByteBuffer) -> Void) {
        let now = NIODeadline.now()
        connection.answered(now: now)
        let elapsed = (now - started).nanoseconds
        guard active else { return closed(elapsed) }
        if !outPending {
            outBuffer.clear()
            outPending = true
        }
        encode(elapsed, &outBuffer)
    }

    private func flushAnswers(context: ChannelHandlerContext) {
        guard outPending else { return }
        outPending = false
        context.writeAndFlush(wrapOutboundOut(outBuffer), promise: nil)
        // A burst of pipelined answers may have grown it: that size is not kept.
        if outBuffer.capacity > Self.keptOutCapacity { outBuffer = ByteBufferAllocator().buffer(capacity: 0) }
    }

    /// The octets of answer buffer the connection holds (tests).
    var heldAnswerCapacity: Int { outBuffer.capacity }

    private func close(context: ChannelHandlerContext) {
        flushAnswers(context: context)
        context.close(promise: nil)
    }

    // MARK: timeouts

    /// One timer per connection, re-armed for the next moment a timeout could expire, so
    /// no timer is touched per request.
    private func schedule(context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            switch self.connection.timerFired(now: .now()) {
            case .rearm(let next):
                self.schedule(context: context, at: next)
            case .close(.read):
                self.state.metrics.readTimeouts.increment()
                self.state.warnings.warn(.readTimeout, self.state.logger, "read timeout: request not completed within \(DurationText.format(self.connection.readTimeout)), closing: peer=\(LogEscaping.field(self.peer))")
                self.close(context: context)
            case .close(.idle):
                self.state.logger.debug("idle timeout, closing: peer=\(LogEscaping.field(self.peer))")
                self.close(context: context)
            }
        }
    }
}
