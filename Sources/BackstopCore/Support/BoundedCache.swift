// The one cache shape in Backstop: values by key, each with an expiry on the monotonic
// clock and a cost in octets, bounded in entries and in octets at once. When either bound
// would be passed the oldest entries go first (insertion order); expired entries go when
// met. One lock per cache, held for a dictionary access. It does not load values (callers
// do, and coalesce their own work in flight).

import NIOConcurrencyHelpers
import NIOCore

public final class BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    public let maxEntries: Int
    public let maxBytes: Int

    private struct Entry {
        var value: Value
        var expires: NIODeadline
        var cost: Int
        var serial: UInt64
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        /// Insertion order for eviction; a slot whose serial no longer matches is stale.
        var order = CircularBuffer<(key: Key, serial: UInt64)>()
        var bytes = 0
        var serial: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())

    public init(maxEntries: Int, maxBytes: Int) {
        self.maxEntries = max(0, maxEntries)
        self.maxBytes = max(0, maxBytes)
    }

    public var count: Int { state.withLockedValue { $0.entries.count } }
    public var bytes: Int { state.withLockedValue { $0.bytes } }

    /// The live value for `key`, or nil.
    public func value(_ key: Key, now: NIODeadline = .now()) -> Value? {
        state.withLockedValue { s in
            guard let entry = s.entries[key] else { return nil }
            guard entry.expires > now else {
                s.bytes -= entry.cost
                s.entries[key] = nil
                return nil
            }
            return entry.value
        }
    }

    /// Stores `value` until `expires`. A value costing more than a sixteenth of the byte
    /// budget is not kept: one entry must not empty the cache of everything else.
    public func insert(_ key: Key, _ value: Value, cost: Int, expires: NIODeadline, now: NIODeadline = .now()) {
        guard maxEntries > 0, expires > now, cost <= maxBytes / 16 else { return }
        state.withLockedValue { s in
            s.serial &+= 1
            if let old = s.entries[key] { s.bytes -= old.cost }
            s.entries[key] = Entry(value: value, expires: expires, cost: cost, serial: s.serial)
            s.bytes += cost
            s.order.append((key, s.serial))
            while s.entries.count > maxEntries || s.bytes > maxBytes, let (oldKey, oldSerial) = s.order.popFirst() {
                if let old = s.entries[oldKey], old.serial == oldSerial {
                    s.bytes -= old.cost
                    s.entries[oldKey] = nil
                }
            }
            // Replacements leave stale slots behind: keep the order list near the live count.
            if s.order.count > 2 * s.entries.count + 1_024 {
                var live = CircularBuffer<(key: Key, serial: UInt64)>(initialCapacity: s.entries.count)
                for slot in s.order where s.entries[slot.key]?.serial == slot.serial { live.append(slot) }
                s.order = live
            }
        }
    }

    public func remove(_ key: Key) {
        state.withLockedValue { s in
            if let old = s.entries.removeValue(forKey: key) { s.bytes -= old.cost }
        }
    }

    public func removeAll() {
        state.withLockedValue { $0 = State() }
    }
}
