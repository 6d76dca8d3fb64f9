// The channel handler of one Postfix connection, policy or socketmap alike: takes the
// frames FrameDecoder makes, hands each request to its responder in arrival order (one at
// a time, as Postfix sends them), writes the encoded answers, and carries out what
// ConnectionState decides about reading, timeouts and closing (graceful stop arrives as
// NIO's ChannelShouldQuiesceEvent). What a request means, and how its answer is counted,
// logged and encoded, is the responder's (PolicyResponder, SocketmapResponder).

import BackstopCore
import Logging
import NIOCore

/// What a connection handler needs from the protocol it serves.
protocol ConnectionResponder {
    associatedtype Request
    associatedtype Outcome: Sendable
    /// Decides on the connection's event loop, now or later.
    func decide(_ request: Request, eventLoop: any EventLoop) -> Answer<Outcome>
    /// The outcome when deciding failed internally.
    func failed(_ request: Request, _ error: any Error) -> Outcome
    /// Counts and logs the outcome and appends its wire form to `buffer`.
    func write(_ request: Request, _ outcome: Outcome, elapsedNanos: Int64, into buffer: inout ByteBuffer)
}

final class ConnectionHandler<Responder: ConnectionResponder>: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ConnectionFrame<Responder.Request>
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let state: ServerState
    private let responder: Responder
    private let peer: String
    private let shutdownGrace: TimeAmount
    private var connection: ConnectionState<Responder.Request>
    private var timer: Scheduled<Void>?
    private var graceTimer: Scheduled<Void>?
    private var outBuffer: ByteBuffer?

    init(state: ServerState, responder: Responder, peer: String) {
        self.state = state
        self.responder = responder
        self.peer = peer
        let settings = state.settings.withLockedValue { $0 }
        self.shutdownGrace = settings.shutdownGrace
        self.connection = ConnectionState(now: .now(), idleTimeout: settings.idleTimeout, readTimeout: settings.readTimeout)
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
            switch responder.decide(request, eventLoop: context.eventLoop) {
            case .now(let outcome):
                write(request, outcome, started: started, context: context)
            case .later(let future):
                future.assumeIsolated().whenComplete { result in
                    let outcome: Responder.Outcome
                    switch result {
                    case .success(let o): outcome = o
                    case .failure(let error): outcome = self.responder.failed(request, error)
                    }
                    self.write(request, outcome, started: started, context: context)
                    self.answerQueued(context: context)
                    self.flushAnswers(context: context)
                }
                return
            }
        }
        if connection.closeIfFinished() { return close(context: context) }
        if connection.resumeRead(writable: context.channel.isWritable) { context.read() }
    }

    private func write(_ request: Responder.Request, _ outcome: Responder.Outcome, started: NIODeadline, context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        connection.answered(now: now)
        guard context.channel.isActive else { return }
        var buffer = outBuffer ?? context.channel.allocator.buffer(capacity: 64)
        responder.write(request, outcome, elapsedNanos: (now - started).nanoseconds, into: &buffer)
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
