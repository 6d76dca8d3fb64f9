// BoundedCache's bounds, whole and split into shards: overfilled, it never holds more
// entries or octets than it was given; a small cache stays one shard and evicts exactly
// oldest first. (Expiry and the per-entry cost cap are exercised through the SPF caches.)

import NIOCore
import Testing
@testable import BackstopCore

struct BoundedCacheTests {
    let later = NIODeadline.now() + .seconds(600)

    @Test func aShardedCacheKeepsItsWholeBounds() {
        let cache = BoundedCache<Int, Int>(maxEntries: 4_096, maxBytes: 16 << 20, shards: 16)
        #expect(cache.shards.count == 16 && cache.shardEntries == 256 && cache.shardBytes == 1 << 20)
        for i in 0..<50_000 { cache.insert(i, i, cost: 100, expires: later) }
        #expect(cache.count <= 4_096 && cache.count > 3_500, "\(cache.count)")
        #expect(cache.bytes == cache.count * 100)
        // The newest entries are there, whatever their shard.
        #expect((49_990..<50_000).allSatisfy { cache.value($0) == $0 })
        #expect(cache.value(0) == nil)
        // The octets bound holds as well: values of up to the largest kept, 16 MiB in all.
        for i in 0..<2_000 { cache.insert(-1 - i, i, cost: 1_000 * (i % 1_049 + 1), expires: later) }
        #expect(cache.bytes <= 16 << 20 && cache.bytes > 8 << 20, "\(cache.bytes)")
        cache.removeAll()
        #expect(cache.count == 0 && cache.bytes == 0)
    }

    @Test func aSmallCacheIsOneShardAndEvictsOldestFirst() {
        let cache = BoundedCache<Int, Int>(maxEntries: 300, maxBytes: 1 << 20, shards: 16)
        #expect(cache.shards.count == 1)
        for i in 0..<400 { cache.insert(i, i, cost: 10, expires: later) }
        #expect(cache.count == 300)
        #expect((0..<100).allSatisfy { cache.value($0) == nil } && (100..<400).allSatisfy { cache.value($0) == $0 })
        // Shards are a power of two, each with at least 256 entries and 1 MiB.
        #expect(BoundedCache<Int, Int>(maxEntries: 3 * 256, maxBytes: 16 << 20, shards: 16).shards.count == 2)
        #expect(BoundedCache<Int, Int>(maxEntries: 100_000, maxBytes: 5 << 20, shards: 16).shards.count == 4)
        #expect(BoundedCache<Int, Int>(maxEntries: 100_000, maxBytes: 64 << 10, shards: 16).shards.count == 1)
    }
}
