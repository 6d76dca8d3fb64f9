// The one cache shape in Backstop: values by key, each with an expiry on the monotonic
// clock and a cost in octets, bounded in entries and in octets at once. When either bound
// would be passed the oldest entries go first (insertion order); expired entries go when
// met. A cache read on every request can be split into shards by key, each with its own
// lock and an equal share of both bounds, so event loops seldom wait for one another (the
// eviction order is then per shard); a lock is held for a dictionary access. It does not
// load values (callers do, and coalesce their own work in flight). Inlinable, so that each
// user's key and value types are specialised where it is used, not looked up at run time.

import NIOConcurrencyHelpers
import NIOCore

/// A key of a BoundedCache. `shardHash` picks the key's shard: by default the key's
/// `hashValue`; a key that already holds a seeded hash of itself (a fingerprint made with
/// Hasher) gives that, and saves hashing the key twice per lookup (the shard's table
/// hashes it again with its own seed).
public protocol CacheKey: Hashable, Sendable {
    var shardHash: Int { get }
}

extension CacheKey {
    public var shardHash: Int { hashValue }
}

/// Plain integers as keys (the cache's own tests).
extension Int: CacheKey {}

public final class BoundedCache<Key: CacheKey, Value: Sendable>: Sendable {
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

    /// Each shard's share of `maxEntries` and `maxBytes`.
    @usableFromInline let shardEntries: Int
    @usableFromInline let shardBytes: Int
    /// A power of two of them, at most the number asked for and never fewer than
    /// `minShardEntries` entries and `minShardBytes` octets each (a small cache stays one
    /// shard with exact bounds). With at most 16 shards of at least 1 MiB, an entry within
    /// the cap (a sixteenth of the whole) takes at most one shard's share.
    @usableFromInline let shards: [NIOLockedValueBox<State>]

    public static var minShardEntries: Int { 256 }
    public static var minShardBytes: Int { 1 << 20 }

    /// `shards`: how many locks to split the cache over (at most 16, rounded down to a power
    /// of two, and fewer for a small cache).
    public init(maxEntries: Int, maxBytes: Int, shards: Int = 1) {
        self.maxEntries = max(0, maxEntries)
        self.maxBytes = max(0, maxBytes)
        let most = max(1, min(shards, 16, self.maxEntries / BoundedCache.minShardEntries, self.maxBytes / BoundedCache.minShardBytes))
        var count = 1
        while count * 2 <= most { count *= 2 }
        shardEntries = self.maxEntries / count
        shardBytes = self.maxBytes / count
        self.shards = (0..<count).map { _ in NIOLockedValueBox(State()) }
    }

    public var count: Int { shards.reduce(0) { total, shard in total + shard.withLockedValue { $0.entries.count } } }
    public var bytes: Int { shards.reduce(0) { total, shard in total + shard.withLockedValue { $0.bytes } } }

    @inlinable
    func state(for key: Key) -> NIOLockedValueBox<State> {
        shards.count == 1 ? shards[0] : shards[key.shardHash & (shards.count - 1)]
    }

    /// The live value for `key`, or nil.
    @inlinable
    public func value(_ key: Key, now: NIODeadline = .now()) -> Value? {
        entry(key, now: now)?.value
    }

    /// The live value for `key` and when it expires, or nil.
    @inlinable
    public func entry(_ key: Key, now: NIODeadline = .now()) -> (value: Value, expires: NIODeadline)? {
        state(for: key).withLockedValue { s in
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
    /// budget is not kept: one entry must not empty the cache of everything else (it can
    /// take at most its shard's share).
    @inlinable
    public func insert(_ key: Key, _ value: Value, cost: Int, expires: NIODeadline, now: NIODeadline = .now()) {
        guard maxEntries > 0, expires > now, cost <= maxBytes / 16 else { return }
        let entryBound = shardEntries, byteBound = shardBytes
        state(for: key).withLockedValue { s in
            s.serial &+= 1
            // A full cache replaces an entry on every insertion, and a removal from Swift's
            // hash table rehashes the keys that follow it in their cluster: grow early, to
            // at most twice the entry bound, so a full cache is under a third loaded.
            if s.entries.count == s.entries.capacity, s.entries.capacity < 2 * entryBound {
                s.entries.reserveCapacity(Swift.min(4 * Swift.max(s.entries.count, 16), 2 * entryBound))
            }
            if let old = s.entries.updateValue(Entry(value: value, expires: expires, cost: cost, serial: s.serial), forKey: key) {
                s.bytes -= old.cost
            }
            s.bytes += cost
            s.order.append((key, s.serial))
            while s.entries.count > entryBound || s.bytes > byteBound, let (oldKey, oldSerial) = s.order.popFirst() {
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
        state(for: key).withLockedValue { s in
            if let old = s.entries.removeValue(forKey: key) { s.bytes -= old.cost }
        }
    }

    public func removeAll() {
        for shard in shards { shard.withLockedValue { $0 = State() } }
    }
}
