// The channel handler of one Postfix connection: frames bytes into requests with the
// bounded parser, hands each to the engine in arrival order (one at a time, as Postfix
// sends them), and writes the encoded answers. It stops reading while answers are owed
// or the peer is not reading (back-pressure), and enforces idle and read timeouts.
// It decides nothing itself.

import BackstopCore
import Logging
import NIOCore

final class PolicyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Requests parsed but not yet answered beyond which reading pauses.
    static let maxQueued = 16

    private let state: ServerState
    private let loopEngine: LoopEngine
    private let peer: String
    private var parser: RequestParser
    private var queue = CircularBuffer<PolicyRequest>(initialCapacity: 4)
    private var busy = false
    private var readHeld = false
    private var closing = false
    private var lastActivity = NIODeadline.now()
    private var requestStarted = NIODeadline.now()
    private var timer: Scheduled<Void>?
    private let idleTimeout: TimeAmount
    private let readTimeout: TimeAmount
    private var outBuffer: ByteBuffer?
    private var needsFlush = false

    init(state: ServerState, loopEngine: LoopEngine, peer: String) {
        self.state = state
        self.loopEngine = loopEngine
        self.peer = peer
        self.parser = RequestParser(limits: state.limits.withLockedValue { $0 })
        let settings = state.settings.withLockedValue { $0 }
        self.idleTimeout = settings.idleTimeout
        self.readTimeout = settings.readTimeout
    }

    func channelActive(context: ChannelHandlerContext) {
        scheduleTimer(context: context, at: .now() + min(idleTimeout, readTimeout))
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        lastActivity = .now()
        let buffer = unwrapInboundIn(data)
        let wasIdle = parser.isIdle
        var completed = false
        do {
            try buffer.withUnsafeReadableBytes { raw in
                try parser.feed(raw) { request in
                    queue.append(request)
                    completed = true
                }
            }
            // The read timeout runs from the first byte of an unfinished request, so a
            // client trickling one byte at a time is still cut off.
            if !parser.isIdle && (wasIdle || completed) { requestStarted = lastActivity }
        } catch {
            state.metrics.protocolErrors.increment()
            state.logger.warning("protocol error, closing connection without an answer: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
            closing = true
            queue.removeAll()  // Postfix retries the whole request on a new connection.
            if !busy { flushAndClose(context: context) }
            return
        }
        processQueue(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded(context: context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if queue.count >= Self.maxQueued || busy || !context.channel.isWritable {
            readHeld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state.logger.debug("connection error: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is DrainEvent {
            closing = true
            if !busy && queue.isEmpty { flushAndClose(context: context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: answering

    private func processQueue(context: ChannelHandlerContext) {
        while !busy, let request = queue.popFirst() {
            let started = NIODeadline.now()
            let engine = loopEngine.engine
            let result = engine.decide(request, eventLoop: context.eventLoop, logger: state.logger)
            switch result {
            case .immediate(let decision):
                answer(request, decision, started: started, context: context)
            case .pending(let future):
                busy = true
                future.assumeIsolated().whenComplete { result in
                    self.busy = false
                    let decision: Decision
                    switch result {
                    case .success(let d): decision = d
                    case .failure(let error):
                        self.state.logger.error("engine failed: \(error)")
                        decision = Decision(action: .dunno, check: nil, reason: "internal_error")
                    }
                    self.answer(request, decision, started: started, context: context)
                    self.flushIfNeeded(context: context)
                    self.processQueue(context: context)
                    self.flushIfNeeded(context: context)
                }
            }
        }
        if !busy && queue.isEmpty {
            if closing { flushAndClose(context: context); return }
            resumeReadingIfPossible(context: context)
        }
    }

    private func answer(_ request: PolicyRequest, _ decision: Decision, started: NIODeadline, context: ChannelHandlerContext) {
        let elapsed = (NIODeadline.now() - started).nanoseconds
        state.metrics.record(request: request, decision: decision, elapsedNanos: elapsed)
        loopEngine.count(decision)
        // The line is only built when the log level keeps it (swift-log's autoclosure).
        state.logger.info("\(DecisionLog.line(request, decision, elapsedNanos: elapsed))")
        var buffer = outBuffer ?? context.channel.allocator.buffer(capacity: 64)
        ResponseEncoder.encode(decision.action, into: &buffer)
        // The message has its once-per-message header only now that an answer carries it.
        decision.headerOnce?.markSent()
        outBuffer = buffer
        needsFlush = true
        lastActivity = .now()
    }

    private func flushIfNeeded(context: ChannelHandlerContext) {
        guard needsFlush, let buffer = outBuffer else { return }
        needsFlush = false
        outBuffer = nil
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    private func flushAndClose(context: ChannelHandlerContext) {
        flushIfNeeded(context: context)
        context.close(promise: nil)
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        guard readHeld, !busy, queue.count < Self.maxQueued, context.channel.isWritable else { return }
        readHeld = false
        context.read()
    }

    // MARK: timeouts

    private func scheduleTimer(context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.timerFired(context: context)
        }
    }

    /// Fires now and then; re-arms itself for the next possible expiry, so no timer is
    /// touched per request.
    private func timerFired(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        let midRequest = !parser.isIdle
        if busy {
            scheduleTimer(context: context, at: now + min(idleTimeout, readTimeout))
            return
        }
        let expired = midRequest ? now - requestStarted >= readTimeout : now - lastActivity >= idleTimeout
        if expired {
            if midRequest {
                state.metrics.readTimeouts.increment()
                state.logger.warning("read timeout: request not completed within \(DurationText.format(readTimeout)), closing: peer=\(LogEscaping.field(peer))")
            } else {
                state.logger.debug("idle timeout, closing: peer=\(LogEscaping.field(peer))")
            }
            closing = true
            flushAndClose(context: context)
            return
        }
        let next = midRequest ? requestStarted + readTimeout : lastActivity + min(idleTimeout, readTimeout)
        scheduleTimer(context: context, at: max(next, now + .milliseconds(10)))
    }
}

/// Sent to every connection on graceful stop: answer what is in flight, then close.
struct DrainEvent: Sendable {}
