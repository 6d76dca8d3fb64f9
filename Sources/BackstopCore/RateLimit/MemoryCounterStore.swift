// The embedded counter store: one GCRA timestamp per key, in 64 shards that each have their
// own lock, so connections hitting different keys never wait for one another and there is
// no global lock. A key is stored as a 112-bit keyed hash plus a 16-bit rule tag (16 bytes)
// and its TAT (8 bytes). Entries whose TAT has passed carry no state; they are dropped
// lazily, by a sweep every 10 s, and whenever a shard is full. A shard holds at most
// max_keys / 64 entries; when a new key does not fit, expired entries go first, then the
// entries with the oldest TAT (those closest to a full bucket, which lose the least) until
// 1/16 of the shard is free. An evicted key starts again with a full bucket.
// The key text is kept only for busy keys (more than half the allowance used, or refused),
// at most 65,536 of them, so `backstop ratelimit list` can name them. With a state file the
// store saves itself periodically and on stop, and loads the file when it is made
// (MemoryStoreSnapshot holds the format). Deciding what a rule allows is RateLimitCheck's.

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
    // Random per store (and kept in its state file): key hashes cannot be predicted, so
    // collisions cannot be forced.
    private let salt0: UInt64
    private let salt1: UInt64
    private let shards: [Shard]
    private let gauges = NIOLockedValueBox<[UInt16: (Gauge, Int)]>([:])
    private let evictions = Counter(label: "backstop_ratelimit_evictions_total")
    /// Evictions are logged in one line per 10 s at most.
    private let evictionLog = LogThrottle(interval: .seconds(10))
    private let sweeper = NIOLockedValueBox<RepeatedTask?>(nil)
    private let logger: Logger
    /// Busy keys' bytes, per shard (same index as `shards`); at most `namedCap` each.
    private let named: [NIOLockedValueBox<[Key: [UInt8]]>]
    let namedCap: Int
    /// Where the counters are saved and loaded from; nil for none.
    public let stateFile: String?
    private let saveInterval: TimeAmount
    private let lastSave = NIOLockedValueBox(NIODeadline.now())
    /// Saves one at a time (a periodic save and the save at stop may meet).
    let saving = NIOLock()
    /// A periodic save is queued or running: the next sweep queues none, so a save that
    /// stalls (a hung disk) does not pile up one more on the thread pool every sweep.
    private let periodicSave = NIOLockedValueBox(false)
    /// Saves begun since the store was made (for tests).
    let savesBegun = NIOLockedValueBox(0)
    /// Most named keys in the whole store.
    public static let maxNamedKeys = 65_536

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
    ///   - stateFile: the file the counters are loaded from now and saved to every
    ///     `saveInterval` (at a sweep) and by `saveState()`; nil for none.
    public init(maxKeys: Int, shards: Int = 64, clock: any RateClock = SystemRateClock(),
                sweepInterval: TimeAmount? = .seconds(10), stateFile: String? = nil, saveInterval: TimeAmount = .seconds(60),
                logger: Logger = Logger(label: "backstop.ratelimit")) {
        precondition(shards > 0 && shards & (shards - 1) == 0, "shard count must be a power of two")
        self.maxKeys = maxKeys
        self.shardCount = shards
        self.perShardCap = max(1, maxKeys / shards)
        self.namedCap = max(1, min(perShardCap, Self.maxNamedKeys / shards))
        self.clock = clock
        self.logger = logger
        self.stateFile = stateFile
        self.saveInterval = saveInterval
        let saved = stateFile.flatMap { Self.load($0, maxKeys: maxKeys, logger: logger) }
        var rng = SystemRandomNumberGenerator()
        // The salts come with the saved keys: without them the keys cannot be found again.
        self.salt0 = saved?.salt0 ?? rng.next()
        self.salt1 = saved?.salt1 ?? rng.next()
        self.shards = (0..<shards).map { _ in Shard([:]) }
        self.named = (0..<shards).map { _ in NIOLockedValueBox([:]) }
        if let saved { restore(saved) }
        if let sweepInterval {
            // On an event loop of NIO's shared group (a sweep holds one shard lock at a time,
            // briefly; a save runs on NIO's thread pool); holds the store weakly, so a
            // replaced store stops sweeping. A save interval shorter than the sweep's makes
            // the task run that often, sweeping still at its own interval.
            let sweepEvery = TimeAmount.nanoseconds(max(1_000_000, sweepInterval.nanoseconds))
            let interval = stateFile == nil ? sweepEvery : min(sweepEvery, .nanoseconds(max(1_000_000, saveInterval.nanoseconds)))
            let nextSweep = NIOLockedValueBox(NIODeadline.now() + sweepEvery)
            let task = MultiThreadedEventLoopGroup.singleton.any().scheduleRepeatedTask(initialDelay: interval, delay: interval) {
                [weak self] repeated in
                guard let self else { return repeated.cancel() }
                let now = NIODeadline.now()
                let due = nextSweep.withLockedValue { next in
                    guard now >= next - .milliseconds(1) else { return false }
                    next = now + sweepEvery
                    return true
                }
                if due { self.sweep() }
                if self.stateFile != nil, self.lastSave.withLockedValue({ $0 }) + self.saveInterval <= .now(),
                   self.periodicSave.withLockedValue({ queued in defer { queued = true }; return !queued }) {
                    NIOThreadPool.singleton.submit { [weak self] state in
                        guard let self else { return }
                        if state == .active { self.saveState() }
                        self.periodicSave.withLockedValue { $0 = false }
                    }
                }
            }
            sweeper.withLockedValue { $0 = task }
        }
    }

    deinit { sweeper.withLockedValue { $0?.cancel() } }

    static func tag(_ rule: RateRuleIdentity) -> UInt16 { UInt16(truncatingIfNeeded: rule.fingerprint >> 48) }

    /// Two SipHash-2-4 values under the store's salts: the same in every process with the
    /// same salts (Swift's Hasher is seeded per process), so a state file's keys are found again.
    func storeKey(_ rule: RateRuleIdentity, _ key: [UInt8]) -> Key {
        key.withUnsafeBytes { bytes in
            let h0 = SipHash24.hash(k0: salt0, k1: salt1, prefix: rule.fingerprint, bytes)
            let h1 = SipHash24.hash(k0: salt1, k1: salt0 ^ 0x5bd1_e995_5bd1_e995, prefix: rule.fingerprint, bytes)
            return Key(h0: (h0 & 0x0000_FFFF_FFFF_FFFF) | UInt64(Self.tag(rule)) << 48, h1: h1)
        }
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
            // A hit refused even with a whole allowance (a cost over the burst) keeps no new
            // key: the table is only read for it (its modify access would make room for one).
            let fresh = GCRA.apply(tat: nil, now: now, cost: hit.cost, hit.parameters)
            guard case .admitted = fresh else {
                guard let index = entries.index(forKey: key) else { return fresh }
                var tat: Int64? = entries.values[index]
                let outcome = Self.update(&tat, now: now, hit)
                if let tat { entries.values[index] = tat }
                return outcome
            }
            // A full shard makes room before it keeps a new key.
            if entries.count >= perShardCap, entries[key] == nil {
                evicted = makeRoom(&entries, now: now)
            }
            // One hash and one probe of the table for the read and the write: the key's slot
            // is found once and updated in place (a new key is inserted there).
            return Self.update(&entries[key], now: now, hit)
        }
        if evicted > 0 { noteEvictions(evicted) }
        switch outcome {
        case .admitted(let remaining, _) where remaining * 2 < hit.parameters.burst: name(key, hit.key)
        case .refused(let retryAfter?) where retryAfter > 0: name(key, hit.key)
        default: break
        }
        return outcome
    }

    /// A hit on the key whose TAT `tat` holds (nil: not held), which it updates.
    private static func update(_ tat: inout Int64?, now: Int64, _ hit: RateHit) -> GCRAOutcome {
        let outcome = GCRA.apply(tat: tat, now: now, cost: hit.cost, hit.parameters)
        if case .admitted(_, let newTAT) = outcome {
            tat = newTAT
        } else if let clamped = GCRA.clamped(tat: tat, now: now, hit.parameters) {
            // Kept from a larger limit: from now on it frees up at this rule's rate.
            tat = clamped
        }
        return outcome
    }

    /// Keeps a busy key's bytes (once; nothing when its shard's table is full or the key is long).
    private func name(_ key: Key, _ bytes: [UInt8]) {
        guard bytes.count <= MemoryStoreSnapshot.maxNameBytes else { return }
        named[Int(key.h0 & UInt64(shardCount - 1))].withLockedValue { names in
            if names[key] == nil, names.count < namedCap { names[key] = bytes }
        }
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
        for (index, shard) in shards.enumerated() {
            shard.withLockedValue { entries in
                entries = entries.filter { $0.value > now }
                for key in entries.keys { perTag[UInt16(truncatingIfNeeded: key.h0 >> 48), default: 0] += 1 }
                // Lock order: a shard, then its names (never the other way round).
                named[index].withLockedValue { names in
                    if !names.isEmpty { names = names.filter { entries[$0.key] != nil } }
                }
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

    // MARK: - Administration (list, reset)

    /// Forgets a key's state (it has its whole allowance again). Returns whether state was held.
    public func reset(rule: RateRuleIdentity, key: [UInt8]) async throws -> Bool {
        let k = storeKey(rule, key)
        let index = Int(k.h0 & UInt64(shardCount - 1))
        let now = clock.now
        return shards[index].withLockedValue { entries in
            named[index].withLockedValue { _ = $0.removeValue(forKey: k) }
            return (entries.removeValue(forKey: k) ?? now) > now
        }
    }

    /// The named (busy) keys of a rule that still hold state, the least available first.
    public func busiest(rule: RateRuleIdentity, limit: Int) async throws -> RateKeyList {
        let now = clock.now
        var found: [RateKeyList.Entry] = []
        let tag = Self.tag(rule)
        for index in 0..<shardCount {
            shards[index].withLockedValue { entries in
                named[index].withLockedValue { names in
                    for (k, bytes) in names where UInt16(truncatingIfNeeded: k.h0 >> 48) == tag {
                        if let tat = entries[k], tat > now, storeKey(rule, bytes) == k { found.append(.init(key: bytes, tat: tat)) }
                    }
                }
            }
        }
        found.sort { $0.tat > $1.tat }
        return RateKeyList(entries: Array(found.prefix(limit)), now: now, complete: false)
    }

    // MARK: - State file

    /// Everything held now, as a snapshot (one shard lock at a time).
    public func snapshot() -> MemoryStoreSnapshot {
        let now = clock.now
        var entries: [MemoryStoreSnapshot.Entry] = []
        for index in 0..<shardCount {
            shards[index].withLockedValue { held in
                named[index].withLockedValue { names in
                    for (k, tat) in held where tat > now {
                        entries.append(.init(h0: k.h0, h1: k.h1, tat: tat, name: names[k]))
                    }
                }
            }
        }
        return MemoryStoreSnapshot(salt0: salt0, salt1: salt1, wallClock: MemoryStoreSnapshot.wallClockNow(),
                                   monotonic: now, entries: entries)
    }

    /// Writes the state file now (the server calls it on stop). Failures are logged, not thrown:
    /// the counters in memory are unaffected.
    public func saveState() {
        guard let stateFile else { return }
        savesBegun.withLockedValue { $0 += 1 }
        saving.withLock {
            let snapshot = snapshot()
            do throws(FileReadError) {
                try MemoryStoreSnapshot.writeAtomically(snapshot.encoded(), to: stateFile)
                lastSave.withLockedValue { $0 = .now() }
                logger.debug("rate-limit state saved", metadata: ["file": "\(stateFile)", "keys": "\(snapshot.entries.count)"])
            } catch {
                lastSave.withLockedValue { $0 = .now() }  // tried; the next try is one interval later
                logger.error("cannot save the rate-limit state: \(error.reason); counters stay in memory and are lost at a restart",
                             metadata: ["file": "\(stateFile)"])
            }
        }
    }

    /// Reads a state file; nil (with a log line) when it is absent or unusable, never fatal.
    static func load(_ path: String, maxKeys: Int, logger: Logger) -> MemoryStoreSnapshot? {
        let bytes: [UInt8]
        do {
            bytes = try RegularFile.read(path, maxBytes: MemoryStoreSnapshot.maxFileBytes(maxKeys: maxKeys, maxNamed: maxNamedKeys))
        } catch {
            if error.errno == ENOENT {
                logger.info("no rate-limit state to load yet: every key starts with its full allowance", metadata: ["file": "\(path)"])
            } else {
                logger.warning("cannot read the rate-limit state: \(error.reason); every key starts with its full allowance",
                               metadata: ["file": "\(path)"])
            }
            return nil
        }
        switch MemoryStoreSnapshot.decode(bytes, maxEntries: maxKeys) {
        case .success(let snapshot): return snapshot
        case .failure(let error):
            logger.warning("rate-limit state ignored: \(error.description); every key starts with its full allowance",
                           metadata: ["file": "\(path)"])
            return nil
        }
    }

    /// Puts a loaded snapshot's keys in place, moved to this run's clock: the time that passed
    /// since the save (by the wall clock, never negative) has been used up; expired keys go.
    func restore(_ snapshot: MemoryStoreSnapshot) {
        let now = clock.now
        let away = max(0, MemoryStoreSnapshot.wallClockNow() &- snapshot.wallClock)
        var loaded = 0
        for entry in snapshot.entries {
            let remaining = entry.tat &- snapshot.monotonic &- away
            guard remaining > 0, remaining < Int64.max / 4 else { continue }
            let key = Key(h0: entry.h0, h1: entry.h1)
            let index = Int(key.h0 & UInt64(shardCount - 1))
            let stored: Bool = shards[index].withLockedValue { entries in
                guard entries.count < perShardCap else { return false }
                entries[key] = now &+ remaining
                return true
            }
            guard stored else { continue }
            loaded += 1
            if let name = entry.name {
                named[index].withLockedValue { names in if names.count < namedCap { names[key] = name } }
            }
        }
        logger.info("rate-limit state loaded", metadata: ["file": "\(stateFile ?? "")", "keys": "\(loaded)",
                                                         "expired": "\(snapshot.entries.count - loaded)"])
    }
}
