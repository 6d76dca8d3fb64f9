// The in-memory store under pressure: many threads on one key admit exactly the limit,
// a flood of distinct keys cannot grow it past max_keys (and does not evict a busy
// abuser's key first), and a million live keys fit in the documented memory.

import Testing
import Dispatch
import Foundation
import NIOConcurrencyHelpers
@testable import BackstopCore

@Suite struct MemoryCounterStoreTests {
    @Test func manyThreadsOnOneKeyAdmitExactlyTheLimit() async throws {
        try await offThePool {
            // A real clock: the limit is so slow (1000 per day) that nothing refills during the test.
            let store = MemoryCounterStore(maxKeys: 10_000, sweepInterval: nil)
            let rule = RateRuleIdentity(name: "r", fingerprint: 7)
            let parameters = GCRAParameters(count: 1000, period: 24 * hour, burst: 1000)!
            let admitted = NIOLockedValueBox(0)
            DispatchQueue.concurrentPerform(iterations: 16) { _ in
                var mine = 0
                for _ in 0..<2000 {
                    if case .admitted = store.apply(RateHit(rule: rule, parameters: parameters, key: Array("one".utf8), cost: 1)) {
                        mine += 1
                    }
                }
                admitted.withLockedValue { $0 += mine }
            }
            #expect(admitted.withLockedValue { $0 } == 1000, "32,000 concurrent hits, exactly 1000 admitted")
        }
    }

    @Test func aFloodOfDistinctKeysCannotPassTheCap() async throws {
        try await offThePool {
            let bench = Bench(count: 10, period: hour, maxKeys: 6400)
            // The abuser has used most of its allowance (its TAT is far ahead).
            for _ in 1...9 { _ = bench.hit("abuser") }
            for i in 0..<50_000 { _ = bench.hit("flood-\(i)") }
            #expect(bench.store.count <= 6400, "held \(bench.store.count) keys, cap 6400")
            #expect(bench.store.count > 5000, "eviction frees only what is needed")
            #expect(bench.admitted("abuser"))
            #expect(!bench.admitted("abuser"), "the key with the most state survived the flood")
        }
    }

    @Test func theDefaultCapHoldsNearlyAllOfItsKeys() async throws {
        try await offThePool {
            let bench = Bench(count: 10, period: hour, maxKeys: 64_000)
            for i in 0..<64_000 { _ = bench.hit("k\(i)") }
            // Keys spread unevenly over the 64 shards: the fullest one starts evicting a little early.
            #expect(bench.store.count > 60_000)
            #expect(bench.store.count <= 64_000)
        }
    }

    @Test func evictionPrefersExpiredEntries() {
        let bench = Bench(count: 10, period: 10 * second, maxKeys: 640)
        for i in 0..<640 { _ = bench.hit("old-\(i)") }
        bench.clock.advance(2 * second)  // every old key has expired
        for _ in 1...10 { _ = bench.hit("busy") }
        for i in 0..<600 { _ = bench.hit("new-\(i)") }
        #expect(!bench.admitted("busy"), "the busy key was not evicted while expired keys were there")
    }

    @Test func aMillionLiveKeysFitInTheMemoryBudget() async throws {
        try await offThePool {
            // Room for 1,100,000 so that no shard is full: the test measures a million live keys.
            let store = MemoryCounterStore(maxKeys: 1_100_000, sweepInterval: nil)
            let rule = RateRuleIdentity(name: "per_client", fingerprint: 99)
            let parameters = GCRAParameters(count: 100, period: hour, burst: 100)!
            let before = residentBytes()
            var key: [UInt8] = Array("client-000000000".utf8)
            for i in 0..<1_000_000 {
                var n = i
                for position in stride(from: key.count - 1, through: 7, by: -1) {
                    key[position] = UInt8(48 + n % 10)
                    n /= 10
                }
                _ = store.apply(RateHit(rule: rule, parameters: parameters, key: key, cost: 1))
            }
            let after = residentBytes()
            let count = store.count
            let grown = Double(after - before) / 1_048_576
            print("ratelimit memory: \(count) keys, RSS \(before / 1_048_576) MiB -> \(after / 1_048_576) MiB (+\(Int(grown)) MiB)")
            #expect(count == 1_000_000)
            #expect(grown < 150, "1,000,000 keys took \(grown) MiB")
        }
    }
}

/// Runs CPU-heavy test work on a Dispatch thread, so the tests do not starve the cooperative
/// thread pool that other (async, timing-sensitive) tests running alongside need.
func offThePool(_ body: @escaping @Sendable () throws -> Void) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}

/// Resident set size of this process, from /proc (Linux).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
