// The clock the in-memory limiter reads: monotonic nanoseconds, injectable so tests can
// step time exactly. Wall-clock time is not used (it jumps); the PostgreSQL store uses the
// database server's clock instead, so that several hosts share one time line.

import NIOCore

public protocol RateClock: Sendable {
    /// Monotonic nanoseconds; only differences matter.
    var now: Int64 { get }
}

/// The process's monotonic clock (CLOCK_MONOTONIC through NIO).
public struct SystemRateClock: RateClock {
    public init() {}
    public var now: Int64 { Int64(truncatingIfNeeded: NIODeadline.now().uptimeNanoseconds) }
}
