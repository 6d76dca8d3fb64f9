// The channel handler of one Postfix connection: takes the frames PolicyRequestDecoder
// makes, hands each request to the engine in arrival order (one at a time, as Postfix
// sends them), writes the encoded answers, and carries out what PolicyConnectionState
// decides about reading, timeouts and closing (graceful stop arrives as NIO's
// ChannelShouldQuiesceEvent). It decides nothing about requests itself.

import BackstopCore
import Logging
import NIOCore

final class PolicyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = PolicyFrame
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let state: ServerState
    private let loopEngine: LoopEngine
    private let peer: String
    private let shutdownGrace: TimeAmount
    private var connection: PolicyConnectionState
    private var timer: Scheduled<Void>?
    private var graceTimer: Scheduled<Void>?
    private var outBuffer: ByteBuffer?

    init(state: ServerState, loopEngine: LoopEngine, peer: String) {
        self.state = state
        self.loopEngine = loopEngine
        self.peer = peer
        let settings = state.settings.withLockedValue { $0 }
        self.shutdownGrace = settings.shutdownGrace
        self.connection = PolicyConnectionState(now: .now(), idleTimeout: settings.idleTimeout, readTimeout: settings.readTimeout)
    }

    func channelActive(context: ChannelHandlerContext) {
        schedule(context: context, at: connection.firstTimer)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.closed()
        timer?.cancel()
        graceTimer?.cancel()
        timer = nil
        graceTimer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .request(let request):
            connection.received(request, now: .now())
            answerQueued(context: context)
        case .started:
            connection.requestBegan(now: .now())
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushAnswers(context: context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if connection.mayRead(writable: context.channel.isWritable) { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if connection.resumeRead(writable: context.channel.isWritable) { context.read() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ProtocolError {
            state.metrics.protocolErrors.increment()
            state.logger.warning("protocol error, closing connection without an answer: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
            if connection.protocolError() { close(context: context) }
            return
        }
        if error is ByteToMessageDecoderError { return }  // bytes after a protocol error: already closing
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

    private func answerQueued(context: ChannelHandlerContext) {
        while let request = connection.nextRequest() {
            let started = NIODeadline.now()
            switch loopEngine.engine.decide(request, eventLoop: context.eventLoop, logger: state.logger) {
            case .now(let decision):
                write(request, decision, started: started, context: context)
            case .later(let future):
                future.assumeIsolated().whenComplete { result in
                    let decision: Decision
                    switch result {
                    case .success(let d): decision = d
                    case .failure(let error):
                        self.state.logger.error("engine failed: \(error)")
                        decision = Decision(action: .dunno, check: nil, reason: "internal_error")
                    }
                    self.write(request, decision, started: started, context: context)
                    self.answerQueued(context: context)
                    self.flushAnswers(context: context)
                }
                return
            }
        }
        if connection.closeIfFinished() { return close(context: context) }
        if connection.resumeRead(writable: context.channel.isWritable) { context.read() }
    }

    private func write(_ request: PolicyRequest, _ decision: Decision, started: NIODeadline, context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        let elapsed = (now - started).nanoseconds
        connection.answered(now: now)
        guard context.channel.isActive else { return }
        state.metrics.record(request: request, decision: decision, elapsedNanos: elapsed)
        loopEngine.count(decision)
        // The line is only built when the log level keeps it (swift-log's autoclosure).
        if loopEngine.logs(decision) { state.logger.info("\(DecisionLog.line(request, decision, elapsedNanos: elapsed))") }
        var buffer = outBuffer ?? context.channel.allocator.buffer(capacity: 64)
        ResponseEncoder.encode(decision.action, into: &buffer)
        // The message has its once-per-message header only now that an answer carries it.
        decision.headerOnce?.markSent()
        outBuffer = buffer
    }

    private func flushAnswers(context: ChannelHandlerContext) {
        guard let buffer = outBuffer else { return }
        outBuffer = nil
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

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
                self.state.logger.warning("read timeout: request not completed within \(DurationText.format(self.connection.readTimeout)), closing: peer=\(LogEscaping.field(self.peer))")
                self.close(context: context)
            case .close(.idle):
                self.state.logger.debug("idle timeout, closing: peer=\(LogEscaping.field(self.peer))")
                self.close(context: context)
            }
        }
    }
}
