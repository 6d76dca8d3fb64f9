// The memory store's state file and its administration: saved counters come back in a new
// store (the time between counts as used), a damaged or foreign file is ignored without
// harm, rule identities are the same in every process, busy keys are listed by name and a
// reset forgets a key.

import Testing
import Foundation
import NIOConcurrencyHelpers
import NIOCore
@testable import BackstopCore

@Suite struct StateFileTests {
    let rule = RateRuleIdentity(name: "per_client", fingerprint: 0x1234_5678_9abc_def0)
    let parameters = GCRAParameters(count: 4, period: hour, burst: 4)!

    func directory() -> String {
        let path = NSTemporaryDirectory() + "backstop-state-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func hit(_ store: MemoryCounterStore, _ key: String, _ times: Int = 1) -> Int {
        (0..<times).reduce(0) { admitted, _ in
            if case .admitted = store.apply(RateHit(rule: rule, parameters: parameters, key: Array(key.utf8), cost: 1)) { return admitted + 1 }
            return admitted
        }
    }

    func available(_ store: MemoryCounterStore, _ key: String) -> Int64 {
        let state = store.stateNow(rule: rule, key: Array(key.utf8))
        return GCRA.available(tat: state.tat, now: state.now, parameters)
    }

    @Test func countersSurviveANewStore() async throws {
        let file = directory() + "/ratelimit.state"
        let first = MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: file)
        #expect(hit(first, "over", 6) == 4)
        #expect(hit(first, "half", 3) == 3)
        first.saveState()
        // Another clock, as after a reboot: the saved TATs are moved onto it.
        let clock = ManualRateClock()
        clock.advance(seconds: 5_000)
        let second = MemoryCounterStore(maxKeys: 10_000, clock: clock, sweepInterval: nil, stateFile: file)
        #expect(available(second, "over") == 0)
        #expect(available(second, "half") == 1)
        #expect(available(second, "fresh") == 4)
        #expect(hit(second, "over") == 0, "still over the limit after the restart")
        // Busy keys keep their names across the restart.
        let listed = try await second.busiest(rule: rule, limit: 10)
        #expect(listed.entries.map { String(decoding: $0.key, as: UTF8.self) } == ["over", "half"])
    }

    @Test func aStalledSaveDoesNotPileUpMore() async throws {
        let file = directory() + "/ratelimit.state"
        // A sweep every millisecond, a save due every 200 ms. While one save is stuck (here:
        // its lock held, as a hung disk would hold it), no more are queued behind it; before,
        // every sweep queued one more, and all of them ran once the disk came back.
        let store = MemoryCounterStore(maxKeys: 10_000, sweepInterval: .milliseconds(1), stateFile: file,
                                       saveInterval: .milliseconds(200))
        // Locked, unlocked and counted on one thread of its own (a lock is the thread's that
        // took it; and a thread, unlike this task, is not late when the test pool is busy).
        let begun = NIOLockedValueBox(0)
        let held = Thread {
            store.saving.lock()
            usleep(700_000)
            store.saving.unlock()
            usleep(50_000)
            begun.withLockedValue { $0 = store.savesBegun.withLockedValue { $0 } }
        }
        held.start()
        while !held.isFinished { try await Task.sleep(for: .milliseconds(50)) }
        // The stuck one, and the next (due 200 ms after it) if the thread runs late; one more
        // per 200 ms that a busy machine leaves it waiting after its 50 ms. Before, the saves
        // queued while it was stuck (one per sweep: hundreds) ran one after another at once.
        let count = begun.withLockedValue { $0 }
        #expect(count >= 1 && count <= 10, "\(count) saves begun")
        #expect(FileManager.default.fileExists(atPath: file))
    }

    /// state_save_interval shorter than the sweep's 10 s is kept: a save every second was
    /// made only at the sweeps, every 10 s.
    @Test func aSaveIntervalShorterThanTheSweepIsKept() async throws {
        let file = directory() + "/ratelimit.state"
        let store = MemoryCounterStore(maxKeys: 10_000, stateFile: file, saveInterval: .milliseconds(200))
        let end = NIODeadline.now() + .seconds(5)
        while store.savesBegun.withLockedValue({ $0 }) < 2 && NIODeadline.now() < end { try await Task.sleep(for: .milliseconds(50)) }
        #expect(store.savesBegun.withLockedValue { $0 } >= 2, "saves every 200 ms, with the sweep every 10 s")
        #expect(FileManager.default.fileExists(atPath: file))
    }

    @Test func damagedOrForeignFilesAreIgnored() throws {
        let dir = directory()
        let file = dir + "/ratelimit.state"
        let first = MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: file)
        _ = hit(first, "over", 4)
        first.saveState()
        var bytes = try #require(FileManager.default.contents(atPath: file).map(Array.init))
        #expect(MemoryStoreSnapshot.decode(bytes, maxEntries: 10).map(\.entries.count) == .success(1))
        #expect(MemoryStoreSnapshot.decode(bytes, maxEntries: 0) == .failure(.init(description: "1 entries, more than max_keys (0)")))
        // One bit of the key's name: only the checksum can tell (the entry still decodes).
        bytes[bytes.count - 10] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let damaged = MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: file)
        #expect(available(damaged, "over") == 4, "a damaged file gives fresh counters")
        try Data("v=spf1 -all\n".utf8).write(to: URL(fileURLWithPath: file))
        #expect(available(MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: file), "over") == 4)
        // A directory where the file should be: nothing loads, and saving fails without harm.
        let directoryPath = dir + "/a-directory"
        try FileManager.default.createDirectory(atPath: directoryPath, withIntermediateDirectories: true)
        let odd = MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: directoryPath)
        _ = hit(odd, "k", 2)
        odd.saveState()
        #expect(available(odd, "k") == 2)
    }

    @Test func aSmallerStoreLoadsWhatFits() throws {
        let file = directory() + "/ratelimit.state"
        let big = MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: file)
        for i in 0..<2_000 { _ = hit(big, "k\(i)") }
        big.saveState()
        let small = MemoryCounterStore(maxKeys: 1_000, clock: ManualRateClock(), sweepInterval: nil, stateFile: file)
        #expect(small.count == 0, "a file with more entries than max_keys is refused before anything is allocated")
    }

    @Test func ruleIdentitiesDoNotDependOnTheProcess() throws {
        let config = try Configuration.parse("""
            [policy]
            rcpt = ["ratelimit"]
            [[ratelimit.rule]]
            name = "per_client"
            key = "client_address"
            count = "recipient"
            limit = "4/1h"
            """, file: "t.toml")
        let settings = try #require(config.checks["ratelimit"] as? RateLimitSettings)
        // FNV-1a of the rule's counting (computed independently with Python): Swift's Hasher is seeded anew in every
        // process, and a fingerprint made with it would lose every saved key at a restart.
        #expect(settings.rules[0].identity.fingerprint == 0x1c75_704a_55ee_8a6c)
    }

    @Test func sipHashMatchesTheReferenceVectors() {
        // The reference implementation's vectors: key 00…0f, messages 00, 01, … of length 8 and 15.
        let k0: UInt64 = 0x0706_0504_0302_0100, k1: UInt64 = 0x0f0e_0d0c_0b0a_0908
        #expect([UInt8]().withUnsafeBytes { SipHash24.hash(k0: k0, k1: k1, prefix: k0, $0) } == 0x93f5_f579_9a93_2462)
        #expect([UInt8](8...14).withUnsafeBytes { SipHash24.hash(k0: k0, k1: k1, prefix: k0, $0) } == 0xa129_ca61_49be_45e5)
    }

    @Test func busyKeysAreNamedAndResetForgetsThem() async throws {
        let store = MemoryCounterStore(maxKeys: 10_000, clock: ManualRateClock(), sweepInterval: nil)
        _ = hit(store, "quiet", 1)
        _ = hit(store, "busy", 3)
        _ = hit(store, "over", 5)
        let listed = try await store.busiest(rule: rule, limit: 10)
        #expect(listed.entries.map { String(decoding: $0.key, as: UTF8.self) } == ["over", "busy"], "one of four used is not busy")
        #expect(!listed.complete)
        #expect(try await store.reset(rule: rule, key: Array("over".utf8)))
        #expect(available(store, "over") == 4)
        #expect(try await store.reset(rule: rule, key: Array("never".utf8)) == false)
        #expect(try await store.busiest(rule: rule, limit: 10).entries.count == 1)
    }
}
