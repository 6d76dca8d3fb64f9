// The DNS answer cache in front of the SPF workers: TTLs are respected (clamped), failures
// are never kept, and the size bound holds by evicting the oldest answers; plus the DNS
// client's timeout against a slow server.

import Foundation
import Testing
@testable import BackstopCore

@Suite struct DNSCacheTests {
    @Test func respectsTTLAndNeverKeepsFailures() {
        let cache = DNSCache(capacity: 10)
        let now = Date()
        cache.store("a.example", .txt, DNSAnswer(status: .success, records: [.txt([Array("x".utf8)])], ttl: 30), now: now)
        cache.store("b.example", .a, DNSAnswer(status: .nameError, ttl: 3600), now: now)
        cache.store("c.example", .a, DNSAnswer(status: .timeout), now: now)
        cache.store("d.example", .a, DNSAnswer(status: .serverFailure), now: now)
        #expect(cache.answer("A.EXAMPLE", .txt, now: now.addingTimeInterval(29))?.records.count == 1)
        #expect(cache.answer("a.example", .txt, now: now.addingTimeInterval(31)) == nil)
        #expect(cache.answer("a.example", .a, now: now) == nil)
        // Negative answers are kept at most 60 s whatever their TTL.
        #expect(cache.answer("b.example", .a, now: now.addingTimeInterval(59))?.status == .nameError)
        #expect(cache.answer("b.example", .a, now: now.addingTimeInterval(61)) == nil)
        #expect(cache.answer("c.example", .a, now: now) == nil)
        #expect(cache.answer("d.example", .a, now: now) == nil)
    }

    @Test func staysWithinItsCapacity() {
        let cache = DNSCache(capacity: 100)
        for n in 0..<1000 {
            cache.store("h\(n).example", .a, DNSAnswer(status: .success, records: [.address([192, 0, 2, 1])], ttl: 300))
            // Replacing the same name again and again must not grow anything either.
            cache.store("same.example", .a, DNSAnswer(status: .success, records: [.address([192, 0, 2, 2])], ttl: 300))
        }
        #expect(cache.count <= 100)
        #expect(cache.answer("h999.example", .a) != nil)
        #expect(cache.answer("h0.example", .a) == nil)
        #expect(DNSCache(capacity: 0).answer("x.example", .a) == nil)
    }

    @Test func clientTimesOutAgainstASlowServer() async throws {
        let server = try await LoopbackDNSServer.start(zone: ["slow.example": [["TXT": "v=spf1 -all"]]], delayMilliseconds: 2000)
        defer { server.stop() }
        let client = DNSClient(resolvers: [server.resolver])
        // Timed on the querying thread itself, not across the await.
        let (late, took) = await offPool { () -> (DNSAnswer, TimeInterval) in
            let started = Date()
            let answer = client.query("slow.example", .txt, timeout: 0.2)
            return (answer, Date().timeIntervalSince(started))
        }
        #expect(late.status == .timeout)
        #expect(took < 1.5, "the timeout bounds the wait, not the server")
        let patient = await offPool { client.query("slow.example", .txt, timeout: 5) }
        #expect(patient.status == .success && patient.records == [.txt([Array("v=spf1 -all".utf8)])])
        #expect(await offPool { client.query("nothing.example", .a, timeout: 3) }.status == .nameError)
        #expect(client.query("a..example", .a, timeout: 3).status == .invalidName)
    }

    @Test func resolverAddresses() {
        #expect(DNSResolverAddress("192.0.2.53") == DNSResolverAddress(host: "192.0.2.53", port: 53))
        #expect(DNSResolverAddress("192.0.2.53:5353") == DNSResolverAddress(host: "192.0.2.53", port: 5353))
        #expect(DNSResolverAddress("[2001:db8::53]:54") == DNSResolverAddress(host: "2001:db8::53", port: 54))
        #expect(DNSResolverAddress("::1") == DNSResolverAddress(host: "::1", port: 53))
        #expect(DNSResolverAddress("dns.example") == nil)
        #expect(DNSResolverAddress("192.0.2.53:0") == nil)
        let file = NSTemporaryDirectory() + "resolv-\(UUID().uuidString).conf"
        try? "# comment\nnameserver 192.0.2.1\nsearch example\nnameserver fe80::1%eth0\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(DNSResolverAddress.system(resolvConf: file) == [DNSResolverAddress(host: "192.0.2.1", port: 53), DNSResolverAddress(host: "fe80::1", port: 53)])
        #expect(DNSResolverAddress.system(resolvConf: "/nonexistent") == [DNSResolverAddress(host: "127.0.0.1", port: 53)])
    }
}
