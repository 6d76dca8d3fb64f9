// The NIO resolver against a DNS server that misbehaves on purpose (Tests/Support/rogue_dns.py):
// TC then a good, a garbage or no TCP answer, a late TC (TCP gets only the time left); a reply with the wrong ID, for the wrong
// question or from the wrong port before the right one; garbage; SERVFAIL; silence. And
// against the ordinary loopback server: many questions for one name share one query.

import BackstopCore
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import BackstopSPF

/// A script that prints its port and stops when its stdin closes.
final class ScriptServer: @unchecked Sendable {
    let process = Process()
    let input = Pipe()
    let port: Int

    init(_ script: String) throws {
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", packageRoot + "/Tests/Support/" + script]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        var line: [UInt8] = []
        while let byte = try output.fileHandleForReading.read(upToCount: 1)?.first, byte != 10 { line.append(byte) }
        guard let port = Int(String(decoding: line, as: UTF8.self)) else {
            process.terminate()
            throw TestError("\(script) did not start (is dnslib installed?)")
        }
        self.port = port
    }

    func stop() { try? input.fileHandleForWriting.close() }
    deinit { if process.isRunning { process.terminate() } }
}

@Suite(.serialized) struct DNSResolverTests {
    func ask(_ name: String, _ resolver: DNSResolver) async throws -> DNSAnswer {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return try await resolver.resolve(DNSQuestion(DNSName(text: name)!, .a), on: loop).get()
    }

    @Test func misbehavingServers() async throws {
        let rogue = try ScriptServer("rogue_dns.py")
        defer { rogue.stop() }
        // `resolver` for the questions that end in silence (800 ms each); `patient`, with
        // 3 s, for those that get an answer, which a busy machine may send late.
        let resolver = DNSResolver(resolvers: [DNSResolverAddress(host: "127.0.0.1", port: rogue.port)], timeout: .milliseconds(800))
        let patient = DNSResolver(resolvers: [DNSResolverAddress(host: "127.0.0.1", port: rogue.port)], timeout: .seconds(3))
        let good = try await ask("good.test", patient)
        #expect(good.status == .success && good.addresses == [192, 0, 2, 1])
        let viaTCP = try await ask("tc-good.test", patient)
        #expect(viaTCP.status == .success && viaTCP.addresses == [192, 0, 2, 1])
        let garbageTCP = try await ask("tc-garbage.test", patient)
        #expect(garbageTCP.status == .serverFailure)
        // Timed where the answer is produced (on the event loop), not when a busy test
        // machine gets round to resuming this task.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let started = NIODeadline.now()
        let (slowTCP, answered) = try await resolver.resolve(DNSQuestion(DNSName(text: "tc-slow.test")!, .a), on: loop)
            .map { ($0, NIODeadline.now()) }.get()
        #expect(slowTCP.status == .timeout)
        #expect(answered - started < .seconds(3), "\(answered - started)")
        // A truncated answer that comes late leaves TCP only what is left of the question's
        // time (800 ms in all), not a fresh 800 ms (which would end at about 1,300 ms).
        let lateStart = NIODeadline.now()
        let (late, lateAnswered) = try await resolver.resolve(DNSQuestion(DNSName(text: "tc-late-slow.test")!, .a), on: loop)
            .map { ($0, NIODeadline.now()) }.get()
        #expect(late.status == .timeout)
        #expect(lateAnswered - lateStart < .milliseconds(1_100), "\(lateAnswered - lateStart)")
        // Replies that are not ours are ignored; the right one that follows is taken.
        #expect(try await ask("wrong-id.test", patient).addresses == [192, 0, 2, 2])
        #expect(try await ask("wrong-question.test", patient).addresses == [192, 0, 2, 3])
        #expect(try await ask("other-port.test", patient).addresses == [192, 0, 2, 4])
        #expect(try await ask("garbage.test", resolver).status == .timeout)
        #expect(try await ask("servfail.test", patient).status == .serverFailure)
        #expect(try await ask("silent.test", resolver).status == .timeout)
        // An alias the resolver left to us (TTL 5) to a name whose answer lives 60 s: the
        // answer is kept no longer than the alias (it was kept for the target's 60 s).
        let aliased = try await ask("cname-short.test", patient)
        #expect(aliased.addresses == [192, 0, 2, 1] && aliased.ttl <= 5, "ttl \(aliased.ttl)")
    }

    @Test func aSecondResolverIsAskedWhenTheFirstFails() async throws {
        let rogue = try ScriptServer("rogue_dns.py")
        defer { rogue.stop() }
        let dns = try await LoopbackDNSServer.start(zone: ["servfail.test": [["A": "192.0.2.77"]]])
        defer { dns.stop() }
        let resolver = DNSResolver(resolvers: [DNSResolverAddress(host: "127.0.0.1", port: rogue.port), dns.resolver],
                                   timeout: .seconds(2))
        let answer = try await ask("servfail.test", resolver)
        #expect(answer.status == .success && answer.addresses == [192, 0, 2, 77])
    }

    @Test func oneQueryInFlightPerQuestion() async throws {
        let dns = try await LoopbackDNSServer.start(zone: ["shared.test": [["A": "192.0.2.8"]]], delayMilliseconds: 200)
        defer { dns.stop() }
        let layer = SPFDNS(resolver: DNSResolver(resolvers: [dns.resolver], timeout: .seconds(2)), limits: SPFDNS.Limits(), metrics: SPFMetrics())
        let question = DNSQuestion(DNSName(text: "shared.test")!, .a)
        let group = MultiThreadedEventLoopGroup.singleton
        let futures = (0..<50).map { _ in layer.answer(question, on: group.next()) }
        for future in futures { #expect(try await future.get().addresses == [192, 0, 2, 8]) }
        #expect(await dns.queryCount() == 1)
        // Now cached: no query at all.
        #expect(try await layer.answer(question, on: group.next()).get().addresses == [192, 0, 2, 8])
        #expect(await dns.queryCount() == 1)
        #expect(layer.cached(question) != nil)
    }

    /// A cached answer's TTL counts down, so an outcome that uses it late is not kept past
    /// the answer; and the cache's own bound (1 h) caps a longer TTL.
    @Test func aCachedAnswersTTLCountsDown() {
        let layer = SPFDNS(resolver: DNSResolver(resolvers: [], timeout: .seconds(1)), limits: SPFDNS.Limits(), metrics: SPFMetrics())
        let question = DNSQuestion(DNSName(text: "late.test")!, .txt)
        let now = NIODeadline.now()
        layer.cache.insert(question, SPFAnswer(status: .success, ttl: 86_400), cost: 100, expires: now + .seconds(3_600), now: now)
        #expect(layer.cached(question, now: now)?.ttl == 3_600)
        #expect(layer.cached(question, now: now + .milliseconds(3_599_500))?.ttl == 1)
        #expect(layer.cached(question, now: now + .seconds(3_600)) == nil)
    }

    @Test func theCacheIsBoundedInOctets() {
        var limits = SPFDNS.Limits()
        limits.bytes = 64 * 1024
        let cache = BoundedCacheProbe(limits)
        #expect(cache.fill(entries: 1_000, each: 2_000) <= 64 * 1024)
    }
}

/// Fills a cache shaped like the DNS cache and reports the octets it holds.
struct BoundedCacheProbe {
    let limits: SPFDNS.Limits
    init(_ limits: SPFDNS.Limits) { self.limits = limits }

    func fill(entries: Int, each cost: Int) -> Int {
        let cache = BoundedCache<Int, Int>(maxEntries: limits.entries, maxBytes: limits.bytes, shards: 16)
        for i in 0..<entries { cache.insert(i, i, cost: cost, expires: .now() + .seconds(60)) }
        return cache.bytes
    }
}
