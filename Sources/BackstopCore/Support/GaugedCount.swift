// A count that several threads change and a gauge publishes (connections open, evaluations
// queued). Each change sets the gauge from the count read under one lock, so the last value
// written is the count after the last change: threads setting it from the values their own
// changes returned could leave an older one. It counts and publishes; it decides nothing.

import Metrics
import NIOConcurrencyHelpers
import Synchronization

public final class GaugedCount: Sendable {
    private let count = Atomic<Int>(0)
    private let lock = NIOLock()
    private let gauge: Gauge

    public init(_ gauge: Gauge) { self.gauge = gauge }

    /// Adds `delta` (negative to take away) and publishes; returns the new count.
    @discardableResult
    public func add(_ delta: Int) -> Int {
        guard delta != 0 else { return value }
        let new = count.add(delta, ordering: .relaxed).newValue
        lock.withLock { gauge.record(count.load(ordering: .relaxed)) }
        return new
    }

    public var value: Int { count.load(ordering: .relaxed) }
}
