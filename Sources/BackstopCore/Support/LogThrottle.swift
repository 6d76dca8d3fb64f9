// The one shape of "log this at most once per interval, with how many happened since":
// a store that fails on every request, or a table full of evicted keys, writes one line
// per interval instead of one per request. It counts; it does not log.

import NIOConcurrencyHelpers
import NIOCore

public final class LogThrottle: Sendable {
    public let interval: TimeAmount
    private let state = NIOLockedValueBox<(pending: Int, last: NIODeadline?)>((0, nil))

    public init(interval: TimeAmount) { self.interval = interval }

    /// Notes `count` more events. Returns how many to report when a line is due now (the
    /// first event, or the first after `interval` since the last line), else nil.
    public func note(_ count: Int = 1, now: NIODeadline = .now()) -> Int? {
        state.withLockedValue { log in
            log.pending += count
            if let last = log.last, now - last < interval { return nil }
            defer { log = (0, now) }
            return log.pending
        }
    }
}
