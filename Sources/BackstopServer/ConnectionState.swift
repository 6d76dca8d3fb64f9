// The state of one Postfix connection (policy or socketmap) as a plain value: requests waiting, whether an
// answer is owed, whether reading is held back, when the current request began and when
// the connection was last busy. Each event returns what the handler must do; the struct
// touches no channel, timer or clock of its own, so every path can be tested by value.

import BackstopCore
import NIOCore

struct ConnectionState {
    /// Requests parsed but not yet answered beyond which reading pauses.
    static let maxQueued = 16
    /// Requests waiting beyond which the connection is a protocol error: what one read
    /// already brought is parsed even when the queue is full, and Postfix never sends a
    /// request before it has the answer to the last one.
    static let maxPipelined = 1_000

    enum Phase: Equatable {
        /// Reading and answering.
        case open
        /// Answer what is queued and in flight, read nothing more, then close
        /// (graceful stop, or a protocol error after which queued requests are dropped).
        case finishing
        /// Closed or closing; nothing more happens.
        case closed
    }

    /// Why a timer closes the connection.
    enum Expiry: Equatable { case read, idle }

    enum TimerAction: Equatable {
        case close(Expiry)
        case rearm(NIODeadline)
    }

    private(set) var phase = Phase.open
    private var queue = CircularBuffer<ConnectionRequest>(initialCapacity: 4)
    /// An answer is being decided (checks may answer later).
    private(set) var answering = false
    private var readHeld = false
    /// First byte of an unfinished request, if one is being read.
    private var requestStarted: NIODeadline?
    private var lastActivity: NIODeadline
    let idleTimeout: TimeAmount
    let readTimeout: TimeAmount

    init(now: NIODeadline, idleTimeout: TimeAmount, readTimeout: TimeAmount) {
        lastActivity = now
        self.idleTimeout = idleTimeout
        self.readTimeout = readTimeout
    }

    /// When the first timer should fire.
    var firstTimer: NIODeadline { lastActivity + min(idleTimeout, readTimeout) }

    // MARK: input

    /// What became of a request that arrived.
    enum Arrival: Equatable {
        case queued
        /// The connection is finishing (graceful stop) or closed: it is not answered, and the
        /// caller logs that (Postfix sees the connection close, and retries or defers).
        case dropped
        /// `maxPipelined` were already waiting: the caller treats it as a protocol error.
        case overflow
    }

    /// Queues a parsed request.
    mutating func received(_ request: ConnectionRequest, now: NIODeadline) -> Arrival {
        guard phase == .open else { return .dropped }
        guard queue.count < Self.maxPipelined else { return .overflow }
        arrived(now: now)
        queue.append(request)
        return .queued
    }

    /// A whole request arrived: no read timeout runs for it any more.
    private mutating func arrived(now: NIODeadline) {
        requestStarted = nil
        lastActivity = now
    }

    /// A request the connection can answer at once, without queueing it: the connection is
    /// open, owes no answer and has none waiting (how Postfix uses it: one request, then its
    /// answer). Then the answer is marked as owed, as `nextRequest` marks it; false when the
    /// request must go through `received`.
    mutating func answersAtOnce(now: NIODeadline) -> Bool {
        guard phase == .open, !answering, queue.isEmpty else { return false }
        arrived(now: now)
        answering = true
        return true
    }

    mutating func requestBegan(now: NIODeadline) {
        guard phase == .open else { return }
        requestStarted = now
        lastActivity = now
    }

    /// A malformed request: nothing queued is answered (Postfix retries the request on a new
    /// connection); an answer in flight is still written. True when the handler should close now.
    mutating func protocolError() -> Bool {
        guard phase != .closed else { return false }
        queue.removeAll()
        return finish()
    }

    /// Graceful stop: true when the handler should close now (nothing owed).
    mutating func quiesce() -> Bool {
        guard phase != .closed else { return false }
        return finish()
    }

    private mutating func finish() -> Bool {
        phase = .finishing
        // Nothing more is read: no read timeout may close it before the answer it owes.
        requestStarted = nil
        if answering || !queue.isEmpty { return false }
        phase = .closed
        return true
    }

    // MARK: answering

    /// The next request to decide, if no answer is owed; marks an answer as owed.
    mutating func nextRequest() -> ConnectionRequest? {
        guard !answering, phase != .closed, let request = queue.popFirst() else { return nil }
        answering = true
        return request
    }

    /// The owed answer was written.
    mutating func answered(now: NIODeadline) {
        answering = false
        lastActivity = now
    }

    /// After the queue ran dry: true when the connection is finishing and owes nothing,
    /// so the handler closes.
    mutating func closeIfFinished() -> Bool {
        guard phase == .finishing, !answering, queue.isEmpty else { return false }
        phase = .closed
        return true
    }

    mutating func closed() { phase = .closed }

    // MARK: reading (back-pressure)

    /// Whether a read may be issued now; if not, it is held until `resumeRead`. An answer
    /// being decided does not hold reading: what arrives meanwhile waits in the queue,
    /// bounded by `maxQueued`, and Postfix sends nothing before its answer anyway, while
    /// holding would take the socket out of the poller and put it back (two system calls)
    /// for every answer that comes later (an SPF evaluation, the PostgreSQL store).
    mutating func mayRead(writable: Bool) -> Bool {
        if phase != .open || queue.count >= Self.maxQueued || !writable {
            readHeld = true
            return false
        }
        return true
    }

    /// True when a held read should be issued now.
    mutating func resumeRead(writable: Bool) -> Bool {
        guard readHeld, phase == .open, queue.count < Self.maxQueued, writable else { return false }
        readHeld = false
        return true
    }

    // MARK: time

    /// The timer fired at `now`: close for an expired read or idle timeout, or re-arm for
    /// the next moment one could expire. The idle timeout does not run while an answer is
    /// owed (the engine's deadline bounds that); the read timeout of a request that began
    /// arriving meanwhile does.
    mutating func timerFired(now: NIODeadline) -> TimerAction {
        guard phase != .closed else { return .rearm(now + idleTimeout) }
        if let started = requestStarted {
            if now - started >= readTimeout { phase = .closed; return .close(.read) }
            return .rearm(max(started + readTimeout, now + .milliseconds(10)))
        }
        if answering || !queue.isEmpty { return .rearm(now + min(idleTimeout, readTimeout)) }
        if now - lastActivity >= idleTimeout { phase = .closed; return .close(.idle) }
        return .rearm(max(lastActivity + min(idleTimeout, readTimeout), now + .milliseconds(10)))
    }
}
