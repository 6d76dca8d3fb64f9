// The embedded counter store: one GCRA timestamp per key, in 64 shards that each have their
// own lock, so connections hitting different keys never wait for one another and there is
// no global lock. A key is stored as a 112-bit keyed hash plus a 16-bit rule tag (16 bytes)
// and its TAT (8 bytes): the key text itself is not kept. Entries whose TAT has passed carry
// no state; they are dropped lazily, by a sweep every 10 s, and whenever a shard is full.
// A shard holds at most max_keys / 64 entries; when a new key does not fit, expired entries go
// first, then the entries with the oldest TAT (those closest to a full bucket, which lose the
// least) until 1/16 of the shard is free. An evicted key starts again with a full bucket.

import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public final class MemoryCounterStore: CounterStore, Sendable {
    public var kind: String { "memory" }
    public let maxKeys: Int
    public let shardCount: Int
    let perShardCap: Int
    let clock: any RateClock
    // Random per store: key hashes cannot be predicted, so collisions cannot be forced.
    private let salt0: UInt64
    private let salt1: UInt64
    private let shards: [Shard]
    private let gauges = NIOLockedValueBox<[UInt16: (Gauge, Int)]>([:])
    private let evictions = Counter(label: "backstop_ratelimit_evictions_total")
    /// Evictions are logged in one line per 10 s at most.
    private let evictionLog = LogThrottle(interval: .seconds(10))
    private let sweeper = NIOLockedValueBox<RepeatedTask?>(nil)
    private let logger: Logger

    struct Key: Hashable {
        let h0: UInt64  // top 16 bits: rule tag; low bits pick the shard
        let h1: UInt64
        func hash(into hasher: inout Hasher) { hasher.combine(h1) }
    }

    /// One shard: its keys' TATs behind its own lock.
    typealias Shard = NIOLockedValueBox<[Key: Int64]>

    /// - Parameters:
    ///   - maxKeys: most keys held in total (each shard holds maxKeys / shards).
    ///   - sweepInterval: how often a background task drops expired entries and publishes key
    ///     counts; nil for none (tests call `sweep()` themselves).
    public init(maxKeys: Int, shards: Int = 64, clock: any RateClock = SystemRateClock(),
                sweepInterval: TimeAmount? = .seconds(10), logger: Logger = Logger(label: "backstop.ratelimit")) {
        precondition(shards > 0 && shards & (shards - 1) == 0, "shard count must be a power of two")
        self.maxKeys = maxKeys
        self.shardCount = shards
        self.perShardCap = max(1, maxKeys / shards)
        self.clock = clock
        self.logger = logger
        var rng = SystemRandomNumberGenerator()
        self.salt0 = rng.next()
        self.salt1 = rng.next()
        self.shards = (0..<shards).map { _ in Shard([:]) }
        if let sweepInterval {
            // On an event loop of NIO's shared group (a sweep holds one shard lock at a time,
            // briefly); holds the store weakly, so a replaced store stops sweeping.
            let interval = TimeAmount.nanoseconds(max(1_000_000, sweepInterval.nanoseconds))
            let task = MultiThreadedEventLoopGroup.singleton.any().scheduleRepeatedTask(initialDelay: interval, delay: interval) {
                [weak self] repeated in
                guard let self else { return repeated.cancel() }
                self.sweep()
            }
            sweeper.withLockedValue { $0 = task }
        }
    }

    deinit { sweeper.withLockedValue { $0?.cancel() } }

    static func tag(_ rule: RateRuleIdentity) -> UInt16 { UInt16(truncatingIfNeeded: rule.fingerprint >> 48) }

    func storeKey(_ rule: RateRuleIdentity, _ key: [UInt8]) -> Key {
        var a = Hasher()
        a.combine(salt0)
        a.combine(rule.fingerprint)
        key.withUnsafeBytes { a.combine(bytes: $0) }
        var b = Hasher()
        b.combine(salt1)
        b.combine(rule.fingerprint)
        key.withUnsafeBytes { b.combine(bytes: $0) }
        let h0 = UInt64(bitPattern: Int64(a.finalize()))
        let h1 = UInt64(bitPattern: Int64(b.finalize()))
        return Key(h0: (h0 & 0x0000_FFFF_FFFF_FFFF) | UInt64(Self.tag(rule)) << 48, h1: h1)
    }

    private func shard(_ key: Key) -> Shard { shards[Int(key.h0 & UInt64(shardCount - 1))] }

    public func hit(_ hit: RateHit, eventLoop: any EventLoop) -> Answer<GCRAOutcome> {
        .now(apply(hit))
    }

    /// The synchronous hit the check uses on the hot path.
    public func apply(_ hit: RateHit) -> GCRAOutcome {
        let key = storeKey(hit.rule, hit.key)
        let shard = shard(key)
        let now = clock.now
        var evicted = 0
        let outcome: GCRAOutcome = shard.withLockedValue { entries in
            let old = entries[key]
            let outcome = GCRA.apply(tat: old, now: now, cost: hit.cost, hit.parameters)
            if case .admitted(_, let newTAT) = outcome {
                if old == nil, entries.count >= perShardCap {
                    evicted = makeRoom(&entries, now: now)
                }
                entries[key] = newTAT
            }
            return outcome
        }
        if evicted > 0 { noteEvictions(evicted) }
        return outcome
    }

    /// Frees room in a full shard (lock held). Returns how many live keys were evicted.
    private func makeRoom(_ entries: inout [Key: Int64], now: Int64) -> Int {
        entries = entries.filter { $0.value > now }
        let target = perShardCap - max(1, perShardCap / 16)
        let excess = entries.count - target
        guard excess > 0 else { return 0 }
        var tats = Array(entries.values)
        tats.sort()
        let threshold = tats[excess - 1]
        var removed = 0
        // Ties at the threshold are removed only as far as needed.
        entries = entries.filter { entry in
            if entry.value < threshold { removed += 1; return false }
            if entry.value == threshold, removed < excess { removed += 1; return false }
            return true
        }
        return removed
    }

    private func noteEvictions(_ count: Int) {
        evictions.increment(by: count)
        let report = evictionLog.note(count)
        if let report {
            logger.warning("rate-limit store full: evicted the keys with the oldest state (they start again with a full allowance); raise [ratelimit] max_keys if this is not a flood",
                           metadata: ["evicted": "\(report)", "max_keys": "\(maxKeys)"])
        }
    }

    public func refund(_ hit: RateHit) {
        let key = storeKey(hit.rule, hit.key)
        let shard = shard(key)
        let now = clock.now
        shard.withLockedValue { entries in
            guard let tat = entries[key] else { return }
            entries[key] = GCRA.refund(tat: tat, now: now, cost: hit.cost, hit.parameters)
        }
    }

    public func state(rule: RateRuleIdentity, key: [UInt8]) async throws -> RateKeyState {
        stateNow(rule: rule, key: key)
    }

    public func stateNow(rule: RateRuleIdentity, key: [UInt8]) -> RateKeyState {
        let k = storeKey(rule, key)
        let shard = shard(k)
        let now = clock.now
        let tat = shard.withLockedValue { $0[k] }
        return RateKeyState(tat: tat.flatMap { $0 > now ? $0 : nil }, now: now)
    }

    /// Keys held right now (expired ones included until the next sweep).
    public var count: Int {
        shards.reduce(0) { sum, shard in sum + shard.withLockedValue { $0.count } }
    }

    /// Bytes held by the entry tables: slots × (key + TAT) plus one metadata bit per slot.
    /// Excludes allocator overhead (a few percent); `backstop ratelimit` reports use it.
    public var tableBytes: Int {
        let slot = MemoryLayout<Key>.stride + MemoryLayout<Int64>.stride
        return shards.reduce(0) { sum, shard in
            sum + shard.withLockedValue { $0.capacity * slot + $0.capacity / 8 }
        }
    }

    /// Drops every expired entry and publishes the key counts. Holds one shard lock at a time.
    public func sweep() {
        let now = clock.now
        var perTag: [UInt16: Int] = [:]
        for shard in shards {
            shard.withLockedValue { entries in
                entries = entries.filter { $0.value > now }
                for key in entries.keys { perTag[UInt16(truncatingIfNeeded: key.h0 >> 48), default: 0] += 1 }
            }
        }
        gauges.withLockedValue { gauges in
            for (tag, entry) in gauges {
                gauges[tag] = (entry.0, perTag[tag] ?? 0)
                entry.0.record(perTag[tag] ?? 0)
            }
        }
    }

    /// Keys held for one rule at the last sweep.
    public func keyCount(rule: RateRuleIdentity) -> Int? {
        gauges.withLockedValue { $0[Self.tag(rule)]?.1 }
    }

    public func publishKeyCounts(to gauges: [RateRuleIdentity: Gauge]) {
        var byTag: [UInt16: (Gauge, Int)] = [:]
        for (rule, gauge) in gauges { byTag[Self.tag(rule)] = (gauge, 0) }
        self.gauges.withLockedValue { $0 = byTag }
    }
}
