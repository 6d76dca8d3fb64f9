// The one cache shape in Backstop: values by key, each with an expiry on the monotonic
// clock and a cost in octets, bounded in entries and in octets at once. When either bound
// would be passed the oldest entries go first (insertion order); expired entries go when
// met. One lock per cache, held for a dictionary access. It does not load values (callers
// do, and coalesce their own work in flight). Inlinable, so that each user's key and value
// types are specialised where it is used, not looked up at run time on every call.

import NIOConcurrencyHelpers
import NIOCore

public final class BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    public let maxEntries: Int
    public let maxBytes: Int

    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var value: Value
        @usableFromInline var expires: NIODeadline
        @usableFromInline var cost: Int
        @usableFromInline var serial: UInt64

        @inlinable
        init(value: Value, expires: NIODeadline, cost: Int, serial: UInt64) {
            self.value = value
            self.expires = expires
            self.cost = cost
            self.serial = serial
        }
    }

    @usableFromInline
    struct State: Sendable {
        @usableFromInline var entries: [Key: Entry] = [:]
        /// Insertion order for eviction; a slot whose serial no longer matches is stale.
        @usableFromInline var order = CircularBuffer<(key: Key, serial: UInt64)>()
        @usableFromInline var bytes = 0
        @usableFromInline var serial: UInt64 = 0

        @inlinable
        init() {}
    }

    @usableFromInline
    let state = NIOLockedValueBox(State())

    public init(maxEntries: Int, maxBytes: Int) {
        self.maxEntries = max(0, maxEntries)
        self.maxBytes = max(0, maxBytes)
    }

    public var count: Int { state.withLockedValue { $0.entries.count } }
    public var bytes: Int { state.withLockedValue { $0.bytes } }

    /// The live value for `key`, or nil.
    @inlinable
    public func value(_ key: Key, now: NIODeadline = .now()) -> Value? {
        entry(key, now: now)?.value
    }

    /// The live value for `key` and when it expires, or nil.
    @inlinable
    public func entry(_ key: Key, now: NIODeadline = .now()) -> (value: Value, expires: NIODeadline)? {
        state.withLockedValue { s in
            guard let entry = s.entries[key] else { return nil }
            guard entry.expires > now else {
                s.bytes -= entry.cost
                s.entries[key] = nil
                return nil
            }
            return (entry.value, entry.expires)
        }
    }

    /// Stores `value` until `expires`. A value costing more than a sixteenth of the byte
    /// budget is not kept: one entry must not empty the cache of everything else.
    @inlinable
    public func insert(_ key: Key, _ value: Value, cost: Int, expires: NIODeadline, now: NIODeadline = .now()) {
        guard maxEntries > 0, expires > now, cost <= maxBytes / 16 else { return }
        state.withLockedValue { s in
            s.serial &+= 1
            // A full cache replaces an entry on every insertion, and a removal from Swift's
            // hash table rehashes the keys that follow it in their cluster: grow early, to
            // at most twice the entry bound, so a full cache is under a third loaded.
            if s.entries.count == s.entries.capacity, s.entries.capacity < 2 * maxEntries {
                s.entries.reserveCapacity(Swift.min(4 * Swift.max(s.entries.count, 16), 2 * maxEntries))
            }
            if let old = s.entries.updateValue(Entry(value: value, expires: expires, cost: cost, serial: s.serial), forKey: key) {
                s.bytes -= old.cost
            }
            s.bytes += cost
            s.order.append((key, s.serial))
            while s.entries.count > maxEntries || s.bytes > maxBytes, let (oldKey, oldSerial) = s.order.popFirst() {
                if let index = s.entries.index(forKey: oldKey), s.entries.values[index].serial == oldSerial {
                    s.bytes -= s.entries.values[index].cost
                    s.entries.remove(at: index)
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

    @inlinable
    public func remove(_ key: Key) {
        state.withLockedValue { s in
            if let old = s.entries.removeValue(forKey: key) { s.bytes -= old.cost }
        }
    }

    public func removeAll() {
        state.withLockedValue { $0 = State() }
    }
}
