// The limiter's arithmetic with an injected clock: exact boundaries, bursts, refused hits
// that consume nothing, long idle periods, and hits larger than the bucket.

import Testing
import NIOConcurrencyHelpers
@testable import BackstopCore

/// A clock the test moves by hand.
final class ManualRateClock: RateClock, @unchecked Sendable {
    private let value = NIOLockedValueBox<Int64>(1_000_000_000_000)
    var now: Int64 { value.withLockedValue { $0 } }
    func advance(_ ns: Int64) { value.withLockedValue { $0 += ns } }
    func advance(seconds: Int64) { advance(seconds * 1_000_000_000) }
}

let second: Int64 = 1_000_000_000
let hour: Int64 = 3600 * second

/// One key, one rule, an in-memory store on a manual clock.
struct Bench {
    let clock = ManualRateClock()
    let store: MemoryCounterStore
    let rule: RateRuleIdentity
    let parameters: GCRAParameters

    init(count: Int64, period: Int64, burst: Int64? = nil, maxKeys: Int = 10_000) {
        store = MemoryCounterStore(maxKeys: maxKeys, clock: clock, sweepInterval: nil)
        rule = RateRuleIdentity(name: "r", fingerprint: 42)
        parameters = GCRAParameters(count: count, period: period, burst: burst ?? count)!
    }

    func hit(_ key: String = "k", cost: Int64 = 1) -> GCRAOutcome {
        store.apply(RateHit(rule: rule, parameters: parameters, key: Array(key.utf8), cost: cost))
    }

    func admitted(_ key: String = "k", cost: Int64 = 1) -> Bool {
        if case .admitted = hit(key, cost: cost) { return true }
        return false
    }
}

@Suite struct GCRATests {
    @Test func theWholeAllowanceAtOnceThenRefused() {
        let bench = Bench(count: 200, period: hour)
        for i in 1...200 { #expect(bench.admitted(), "hit \(i) of 200 must be admitted") }
        #expect(!bench.admitted(), "hit 201 must be refused")
        if case .refused(let retry) = bench.hit() {
            #expect(retry == 18 * second, "one unit comes back every 3600/200 = 18 s")
        } else { Issue.record("expected a refusal") }
    }

    /// A key's state outlives a change of the rule's numbers (a reload, an override added or
    /// removed): a smaller limit reads it as at most its whole bucket used, so the key frees
    /// up at the new rate instead of waiting out the old one.
    @Test func aLowerLimitCountsTheOldStateAsAtMostItsWholeBucket() {
        let day = 24 * hour
        let bench = Bench(count: 1000, period: day)
        let now0 = bench.clock.now
        for _ in 1...900 { _ = bench.hit() }
        for _ in 1...900 { _ = bench.hit("idle") }
        let lower = GCRAParameters(count: 100, period: hour, burst: 100)!
        func hit(_ key: String = "k") -> GCRAOutcome {
            bench.store.apply(RateHit(rule: bench.rule, parameters: lower, key: Array(key.utf8), cost: 1))
        }
        // 900 of 1,000 a day is more than 100 an hour: refused, one unit back in 36 s.
        #expect(hit() == .refused(retryAfter: 36 * second))
        bench.clock.advance(36 * second)
        if case .admitted = hit() {} else { Issue.record("36 s later one unit is back at the new rate") }
        #expect(hit() == .refused(retryAfter: 36 * second))
        // Back to the larger limit: the state is what the smaller one left (its bucket used
        // up: an hour ahead, under 42 units of the 1,000 a day), so 957 are left after this hit.
        if case .admitted(let remaining, _) = bench.hit() { #expect(remaining == 957) } else { Issue.record("admitted") }
        // status reads such a state as apply does, not as 20 hours of waiting.
        let line = RateLimitCheck.keyLine(lower, key: "k", state: RateKeyState(tat: now0 + 77_760 * second, now: now0))
        #expect(line == "key k: over the limit: 0 of 100 available (its state comes from a larger limit: it counts as all 100 used at the key's next hit, and from then on one comes back every 36s)", "\(line)")
        // A key left idle after the change: its next hit is refused and counts as the whole
        // burst used; one unit is back an emission interval later.
        bench.clock.advance(2 * hour)
        #expect(hit("idle") == .refused(retryAfter: 36 * second))
        bench.clock.advance(36 * second)
        if case .admitted = hit("idle") {} else { Issue.record("one unit back 36 s after the first hit") }
    }

    @Test func refillsOneUnitEveryEmissionIntervalExactly() {
        let bench = Bench(count: 200, period: hour)
        for _ in 1...200 { _ = bench.hit() }
        bench.clock.advance(18 * second - 1)
        #expect(!bench.admitted(), "1 ns before the interval nothing is back")
        bench.clock.advance(1)
        #expect(bench.admitted(), "exactly at 18 s one unit is back")
        #expect(!bench.admitted())
    }

    @Test func refusedHitsConsumeNothing() {
        let bench = Bench(count: 10, period: 10 * second)  // one per second
        for _ in 1...10 { _ = bench.hit() }
        for _ in 1...1000 { #expect(!bench.admitted()) }  // a client hammering while over
        bench.clock.advance(second)
        #expect(bench.admitted(), "the hammering did not push the next unit further away")
        bench.clock.advance(3 * second)
        for _ in 1...3 { #expect(bench.admitted()) }
        #expect(!bench.admitted())
    }

    @Test func noDoubleBurstAtAWindowBoundary() {
        // A fixed window would allow 10 at 0:59 and 10 more at 1:00; GCRA allows 10 then one per 6 s.
        let bench = Bench(count: 10, period: 60 * second)
        bench.clock.advance(59 * second)
        for _ in 1...10 { #expect(bench.admitted()) }
        bench.clock.advance(second)
        #expect(!bench.admitted())
        var admitted = 0
        for _ in 0..<60 {
            bench.clock.advance(second)
            if bench.admitted() { admitted += 1 }
        }
        #expect(admitted == 10, "60 s later exactly 10 more, one every 6 s")
    }

    @Test func longIdleFillsTheBucketOnlyToTheBurst() {
        let bench = Bench(count: 5, period: 5 * second, burst: 5)
        for _ in 1...5 { _ = bench.hit() }
        bench.clock.advance(365 * 24 * hour)
        for _ in 1...5 { #expect(bench.admitted()) }
        #expect(!bench.admitted(), "a year of silence still allows only the burst")
    }

    @Test func smallerBurstSpreadsTheAllowance() {
        let bench = Bench(count: 60, period: 60 * second, burst: 3)
        for _ in 1...3 { #expect(bench.admitted()) }
        #expect(!bench.admitted())
        bench.clock.advance(second)
        #expect(bench.admitted())
        #expect(!bench.admitted())
    }

    @Test func costsAndHitsLargerThanTheBucket() {
        let bench = Bench(count: 1000, period: hour)  // bytes, say
        #expect(bench.admitted(cost: 600))
        #expect(!bench.admitted(cost: 401))
        #expect(bench.admitted(cost: 400), "the refused 401 took nothing, so exactly 400 remain")
        if case .refused(let retry) = bench.hit("other", cost: 1001) {
            #expect(retry == nil, "larger than the whole bucket: never fits")
        } else { Issue.record("a hit larger than the burst must be refused") }
    }

    @Test func keysAndRulesAreIndependent() {
        let bench = Bench(count: 1, period: hour)
        #expect(bench.admitted("a"))
        #expect(!bench.admitted("a"))
        #expect(bench.admitted("b"))
        let other = RateRuleIdentity(name: "other", fingerprint: 43)
        let outcome = bench.store.apply(RateHit(rule: other, parameters: bench.parameters, key: Array("a".utf8), cost: 1))
        #expect(outcome != .refused(retryAfter: 3600 * second))
        if case .admitted = outcome {} else { Issue.record("another rule has its own counter") }
    }

    @Test func refundGivesBackExactly() {
        let bench = Bench(count: 3, period: 3 * second)
        for _ in 1...3 { _ = bench.hit() }
        bench.store.refund(RateHit(rule: bench.rule, parameters: bench.parameters, key: Array("k".utf8), cost: 1))
        #expect(bench.admitted())
        #expect(!bench.admitted())
    }

    @Test func expiredEntriesCarryNoStateAndAreSwept() {
        let bench = Bench(count: 10, period: 10 * second)
        for i in 0..<100 { _ = bench.hit("key\(i)") }
        #expect(bench.store.count == 100)
        bench.clock.advance(second - 1)
        bench.store.sweep()
        #expect(bench.store.count == 100, "each key is 1 s ahead: still state")
        bench.clock.advance(1)
        bench.store.sweep()
        #expect(bench.store.count == 0, "full buckets are forgotten")
    }

    @Test func limitParsing() {
        #expect(RateLimitText.parseLimit("200/1h")! == (200, hour))
        #expect(RateLimitText.parseLimit(" 10 / m ")! == (10, 60 * second))
        #expect(RateLimitText.parseLimit("50M/1d")! == (50_000_000, 24 * hour))
        #expect(RateLimitText.parseLimit("100/.5h").map { $0.1 } == 30 * 60 * second, "half an hour, not 1.5 h")
        #expect(RateLimitText.parseLimit("200") == nil)
        #expect(RateLimitText.parseLimit("0/1h") == nil)
        #expect(RateLimitText.parseLimit("-3/1h") == nil)
        #expect(RateLimitText.parseLimit("5/0s") == nil)
        #expect(GCRAParameters(count: 7, period: 1, burst: 7) == nil, "T below 1 ns")
    }

    /// The longest period a limit may have (about 146 years in one unit) still gives a status
    /// line: `tat + interval` overflowed on the PostgreSQL store's clock (nanoseconds since
    /// 1970), and on the memory store's after about two years of uptime.
    @Test func statusOfTheLongestLimitDoesNotOverflow() throws {
        let (count, period) = try #require(RateLimitText.parseLimit("1/53000d"))
        let p = try #require(GCRAParameters(count: count, period: period, burst: 1))
        let now: Int64 = 1_800_000_000 * second
        guard case .admitted(_, let tat) = GCRA.apply(tat: nil, now: now, cost: 1, p) else {
            Issue.record("the first hit was refused")
            return
        }
        let line = RateLimitCheck.keyLine(p, key: "k", state: RateKeyState(tat: tat, now: now))
        #expect(line.hasPrefix("key k: over the limit: 0 of 1 available; the next one in "), "\(line)")
    }

    /// /ratelimit/status with values from a hostile or broken PostgreSQL (its clock before
    /// 1970, a TAT near the largest value): tat - now does not fit, and trapped the server.
    @Test func statusOfAStateFromABrokenStoreDoesNotTrap() throws {
        let p = try #require(GCRAParameters(count: 10, period: 60 * second, burst: 10))
        for (tat, now) in [(Int64.max, Int64(-1)), (Int64.max, Int64.min), (Int64.max - 5, Int64(-7))] {
            let line = RateLimitCheck.keyLine(p, key: "k", state: RateKeyState(tat: tat, now: now))
            #expect(line.hasPrefix("key k: over the limit: 0 of 10 available (its state comes from a larger limit"), "\(line)")
        }
    }
}
