// The server's DNS for SPF: one cache shared by every event loop and worker, bounded in
// entries and octets, on the monotonic clock; one query in flight per question (everyone
// who needs the same answer waits for the same query); each answer turned into its SPF
// view (record checked against the grammar) once, on its way into the cache. It also
// picks, from the cache, the answers a record will need, to send them with it.

import BackstopCore
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Questions key the shared DNS cache (the shard from their hash).
extension DNSQuestion: CacheKey {}

public final class SPFDNS: Sendable {
    public struct Limits: Sendable, Equatable {
        public var entries = 10_000
        public var bytes = 8 << 20
        /// TTLs are kept within these bounds; NXDOMAIN and NODATA at most `negativeTTL`.
        public var minTTL: UInt32 = 1
        public var maxTTL: UInt32 = 3_600
        public var negativeTTL: UInt32 = 60
        public init() {}
    }

    let resolver: DNSResolver
    let cache: BoundedCache<DNSQuestion, SPFAnswer>
    let limits: Limits
    private let inFlight = NIOLockedValueBox<[DNSQuestion: [EventLoopPromise<SPFAnswer>]]>([:])
    let metrics: SPFMetrics

    /// Answers sent along with a record at most, and their cost (`SPFAnswer.cost`, which is
    /// more than their encoding) at most: with the answer they go with (≤ ~340 KB encoded)
    /// they stay within a frame (`SPFWire.maxToWorker`); the worker asks for what was left out.
    static let maxPrefetch = 64
    static let maxPrefetchCost = 96 << 10

    init(resolver: DNSResolver, limits: Limits, metrics: SPFMetrics) {
        self.resolver = resolver
        self.limits = limits
        self.cache = BoundedCache(maxEntries: limits.entries, maxBytes: limits.bytes, shards: 16)
        self.metrics = metrics
    }

    /// Questions being asked now (for tests and the metrics).
    public var queriesInFlight: Int { inFlight.withLockedValue { $0.count } }

    /// The cached answer, its TTL counting down: what is left of it is what an outcome that
    /// uses it may be kept for.
    public func cached(_ question: DNSQuestion, now: NIODeadline = .now()) -> SPFAnswer? {
        guard let (value, expires) = cache.entry(question, now: now) else { return nil }
        var answer = value
        let left = (expires - now).nanoseconds
        answer.ttl = min(answer.ttl, UInt32(clamping: (left + 999_999_999) / 1_000_000_000))
        return answer
    }

    /// The answer, from the cache or from one query shared with everyone asking now. The
    /// future always succeeds; it completes on `loop`.
    public func answer(_ question: DNSQuestion, on loop: any EventLoop) -> EventLoopFuture<SPFAnswer> {
        if let hit = cached(question) {
            metrics.dnsCacheHits.increment()
            return loop.makeSucceededFuture(hit)
        }
        let promise = loop.makePromise(of: SPFAnswer.self)
        let first = inFlight.withLockedValue { waiting -> Bool in
            if waiting[question] != nil {
                waiting[question]!.append(promise)
                return false
            }
            waiting[question] = [promise]
            return true
        }
        guard first else { return promise.futureResult }
        metrics.dnsCacheMisses.increment()
        metrics.dnsQueries.increment()
        resolver.resolve(question, on: loop).whenComplete { result in
            let decoded = (try? result.get()) ?? DNSAnswer(status: .serverFailure)
            var answer = SPFAnswer(decoded, question: question)
            // Waiters see the TTL the cache keeps it for, as a later cache hit would.
            if let kept = self.store(question, answer) { answer.ttl = min(answer.ttl, kept) }
            let waiters = self.inFlight.withLockedValue { $0.removeValue(forKey: question) } ?? []
            for waiter in waiters { waiter.succeed(answer) }
        }
        return promise.futureResult
    }

    /// Keeps `answer` for its TTL within the limits; returns that TTL, nil for a failure.
    private func store(_ question: DNSQuestion, _ answer: SPFAnswer) -> UInt32? {
        let ttl: UInt32
        switch answer.status {
        case .success where answer.recordCount > 0:
            ttl = min(max(answer.ttl, limits.minTTL), limits.maxTTL)
        case .success, .nameError:
            ttl = min(max(answer.ttl, limits.minTTL), limits.negativeTTL)
        case .serverFailure, .timeout:
            return nil  // failures are never kept: the next evaluation may do better
        }
        let now = NIODeadline.now()
        cache.insert(question, answer, cost: answer.cost + question.name.wire.count, expires: now + .seconds(Int64(ttl)), now: now)
        return ttl
    }

    /// Cached answers `answer` (a TXT answer carrying a record) will need for `client`,
    /// appended to `out` unless already in `sent`; follows include and redirect.
    func related(to answer: SPFAnswer, client: [UInt8], sent: inout Set<DNSQuestion>, into out: inout [SPFWire.Answer]) {
        var spent = 0
        related(to: answer, client: client, sent: &sent, into: &out, spent: &spent, depth: 0)
    }

    private func related(to answer: SPFAnswer, client: [UInt8], sent: inout Set<DNSQuestion>, into out: inout [SPFWire.Answer],
                         spent: inout Int, depth: Int) {
        guard depth < 10, !answer.related.isEmpty else { return }
        let family: DNSType = client.count == 4 ? .a : .aaaa
        func add(_ question: DNSQuestion) -> SPFAnswer? {
            guard out.count < SPFDNS.maxPrefetch, !sent.contains(question), let hit = cached(question) else { return nil }
            let cost = hit.cost
            guard spent + cost <= SPFDNS.maxPrefetchCost else { return nil }
            spent += cost
            sent.insert(question)
            out.append(SPFWire.Answer(question, hit))
            return hit
        }
        for item in answer.related {
            guard out.count < SPFDNS.maxPrefetch else { return }
            switch item.kind {
            case .address:
                if let name = item.name { _ = add(DNSQuestion(name, family)) }
            case .exists:
                if let name = item.name { _ = add(DNSQuestion(name, .a)) }
            case .mx:
                if let name = item.name, let mx = add(DNSQuestion(name, .mx)) {
                    for exchange in mx.names.prefix(10) { _ = add(DNSQuestion(exchange, family)) }
                }
            case .ptr:
                if let ptr = add(DNSQuestion(DNSName.reverse(client), .ptr)) {
                    for host in ptr.names.prefix(10) { _ = add(DNSQuestion(host, family)) }
                }
            case .txt:
                if let name = item.name, let txt = add(DNSQuestion(name, .txt)) {
                    related(to: txt, client: client, sent: &sent, into: &out, spent: &spent, depth: depth + 1)
                }
            }
        }
    }
}
