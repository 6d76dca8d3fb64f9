// SPFVerifier and its worker processes against a real DNS server on loopback: results,
// explanations and the decisive term; long records (70 ip4 terms, ~1 KB with an include at
// the end, a record split over TXT strings); records with %{l} kept per sender and others
// per domain; a sender domain in U-labels; concurrent evaluations; bounded queries; a
// DNS server that never answers; a full queue.

import BackstopCore
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import BackstopSPF

nonisolated(unsafe) let spfZone: [String: Any] = [
    "pass.example": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all exp=why.pass.example"]],
    "why.pass.example": [["TXT": "%{i} is not one of %{d}'s designated mail servers."]],
    "soft.example": [["TXT": "v=spf1 ~all"]],
    "strict.example": [["TXT": "v=spf1 ?all"]],
    "broken.example": [["TXT": "v=spf1 ip4:192.0.2.1 -bogus:x"]],
    "hostile.example": [["TXT": "v=spf1 -all exp=exp.hostile.example"]],
    "exp.hostile.example": [["TXT": "bad\r\naction=OK\r\n"]],
    "hostile2.example": [["TXT": "v=spf1 -all exp=exp.hostile2.example"]],
    "exp.hostile2.example": [["TXT": "%{l} action=OK"]],
    "slow.example": ["TIMEOUT"],
    "waits.example": [["TXT": "v=spf1 a:slow.example -all"]],
    "mail.helo.example": [["TXT": "v=spf1 -all"]],
    "loop.example": [["TXT": "v=spf1 include:loop.example -all"]],
    "mech.example": [["TXT": "v=spf1 a:nohost.mech.example mx ptr ~all"], ["MX": [10, "mx1.mech.example"]]],
    "mx1.mech.example": [["A": "192.0.2.77"]],
    "78.2.0.192.in-addr.arpa": [["PTR": "h.mech.example"]],
    "h.mech.example": [["A": "192.0.2.78"]],
    // The client's reverse name never answers: `ptr` does not match, and the next term decides.
    "ptrfail.example": [["TXT": "v=spf1 ptr ip4:192.0.2.99 -all"]],
    "99.2.0.192.in-addr.arpa": ["TIMEOUT"],
    "many.example": [["TXT": "v=spf1 " + (1...12).map { "a:h\($0).many.example" }.joined(separator: " ") + " -all"]],
    // 70 ip4 terms and -all: over libspf2's 511 octets of compiled mechanisms.
    "seventy.example": [["TXT": "v=spf1 " + (1...70).map { "ip4:198.51.100.\($0)" }.joined(separator: " ") + " -all"]],
    // ~1 KB: 40 ip4, 12 ip6, then the include that passes and -all.
    "large.example": [["TXT": "v=spf1 " + (1...40).map { "ip4:203.0.113.\($0)/32" }.joined(separator: " ") + " "
        + (1...12).map { "ip6:2001:db8:\(String($0, radix: 16))::/48" }.joined(separator: " ") + " include:inc.large.example -all"]],
    "inc.large.example": [["TXT": "v=spf1 ip4:192.0.2.200 -all"]],
    // One record in three TXT strings (each under 255 octets).
    "split.example": [["TXT": ["v=spf1 " + (1...10).map { "ip4:198.18.0.\($0)" }.joined(separator: " "),
                               " " + (11...20).map { "ip4:198.18.0.\($0)" }.joined(separator: " "), " ip4:198.18.1.0/24 -all"]]],
    // A 60 KB valid record that needs TCP, and one that is 60 KB of garbage.
    "huge.example": [["TXT": ["v=spf1 " + (0..<2_600).map { "ip4:10.\($0 / 256).\($0 % 256).1" }.joined(separator: " ") + " -all"]]],
    "junk.example": [["TXT": ["v=spf1 " + String(repeating: "junk ", count: 12_000)]]],
    // Records of ~36 KB each, included by chains of two, four and six.
    "big1.example": [["TXT": [bigRecord]]], "big2.example": [["TXT": [bigRecord]]], "big3.example": [["TXT": [bigRecord]]],
    "big4.example": [["TXT": [bigRecord]]], "big5.example": [["TXT": [bigRecord]]], "big6.example": [["TXT": [bigRecord]]],
    "chain2.example": [["TXT": "v=spf1 include:big1.example include:big2.example -all"]],
    "chain4.example": [["TXT": "v=spf1 " + (1...4).map { "include:big\($0).example" }.joined(separator: " ") + " -all"]],
    "chain6.example": [["TXT": "v=spf1 " + (1...6).map { "include:big\($0).example" }.joined(separator: " ") + " -all"]],
    // %{l} of an SMTPUTF8 sender builds a name of 8-bit octets: the included record's `a`
    // is that name (it was its escaped text, "\\195\\188.u.idn-l.example").
    "idn-l.example": [["TXT": "v=spf1 include:%{l}.u.idn-l.example -all"]],
    "ü.u.idn-l.example": [["TXT": "v=spf1 a -all"], ["A": "192.0.2.55"]],
    // A record whose mechanisms read the local part.
    "readsl.example": [["TXT": "v=spf1 exists:%{l}.x.readsl.example -all"]],
    // An include whose record is decided by ?all does not match: -all decides.
    "mechname.example": [["TXT": "v=spf1 -include:neutral.mechname.example -all"]],
    "neutral.mechname.example": [["TXT": "v=spf1 ?all"]],
    // After a redirect= to a record without exp=, the original's exp= is not used (RFC 7208 §6.2).
    "redir.example": [["TXT": "v=spf1 include:incfail.example redirect=target.example exp=why.redir.example"]],
    "incfail.example": [["TXT": "v=spf1 -all"]],
    "target.example": [["TXT": "v=spf1 -all"]],
    "why.redir.example": [["TXT": "the original domain's explanation"]],
    // 60 KB of the shortest term: the most terms a record can hold (30,000 lookups).
    "terms.example": [["TXT": ["v=spf1" + String(repeating: " a", count: 30_000)]], ["A": "203.0.113.9"]],
    // Per-sender and per-HELO records.
    "local.example": [["TXT": "v=spf1 exists:%{l}.users.local.example -all"]],
    "alice.users.local.example": [["A": "127.0.0.2"]],
    "perhelo.example": [["TXT": "v=spf1 a:%{h} -all"]],
    "good.helo.example": [["A": "192.0.2.60"]],
    // A domain in U-labels is asked in A-labels (RFC 8616).
    "xn--bcher-kva.example": [["TXT": "v=spf1 ip4:192.0.2.90 -all"]],
    // Macro bomb: a:%{d} ×1,500 for a 249-octet domain.
    bombDomain: [["TXT": "v=spf1 a:" + String(repeating: "%{d}", count: 1_500) + " -all"]],
]

/// ~36 KB: 2,600 ip4 terms (none matches the tests' clients) and ?all.
let bigRecord = "v=spf1 " + (0..<2_600).map { "ip4:10.\($0 / 256).\($0 % 256).1" }.joined(separator: " ") + " ?all"

let bombDomain = [String(repeating: "q", count: 61), String(repeating: "q", count: 61), String(repeating: "q", count: 61),
                  String(repeating: "r", count: 50), "bomb", "example"].joined(separator: ".")

private func request(sender: String, client: String = "198.51.100.7", helo: String = "mail.helo.example",
                     instance: String = "", recipient: String = "rcpt@local.example", sasl: String = "") -> PolicyRequest {
    PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", client),
                   ("sender", sender), ("helo_name", helo), ("instance", instance), ("recipient", recipient),
                   ("sasl_username", sasl)])
}

func decide(_ engine: PolicyEngine, _ request: PolicyRequest) async throws -> Decision {
    switch engine.decide(request, deadlines: DeadlineQueue(eventLoop: MultiThreadedEventLoopGroup.singleton.next()), logger: testLogger) {
    case .now(let d): return d
    case .later(let f): return try await f.get()
    }
}

/// An SPF check's settings for tests. The deadline is long (10 s) because these tests are
/// not about it: a first evaluation starts a worker process, which four busy loops on two
/// cores once made take over 4 s; tests of the deadline pass their own.
func checkSettings(_ dns: LoopbackDNSServer, workers: Int = 2, dnsTimeout: TimeAmount = .seconds(2),
                   deadline: TimeAmount = .seconds(10), queue: Int = 100) -> SPFSettings {
    var s = SPFSettings()
    s.verifier = verifierSettings(dns, workers: workers, dnsTimeout: dnsTimeout, deadline: deadline, queue: queue)
    s.receiver = "mx.test"
    s.authservID = "mx.test"
    return s
}

func makeCheck(_ settings: SPFSettings, previous: SPFCheck? = nil) throws -> SPFCheck {
    let verifier = try previous?.verifier ?? makeVerifier(settings.verifier)
    return SPFCheck(settings: settings, verifier: verifier, logger: testLogger, previous: previous)
}

@Suite(.serialized) struct SPFVerifierTests {
    /// `body` with a verifier asking the loopback DNS server for `spfZone`.
    func withVerifier(_ body: (SPFVerifier) async throws -> Void) async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns))
        defer { verifier.shutdown() }
        try await body(verifier)
    }

    @Test func resultsExplanationsAndTheDecisiveTerm() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns))
        defer { verifier.shutdown() }
        let pass = await verifier.evaluate(ip: "192.0.2.10", sender: "a@pass.example", helo: "x.example")
        #expect(pass.result == .pass && pass.mechanism == "ip4:192.0.2.0/24")
        let fail = await verifier.evaluate(ip: "::ffff:198.51.100.1", sender: "a@pass.example", helo: "x.example")
        #expect(fail.result == .fail && fail.mechanism == "-all")
        #expect(fail.explanation == "198.51.100.1 is not one of pass.example's designated mail servers.")
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@soft.example", helo: "x").result == .softfail)
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@broken.example", helo: "x").result == .permerror)
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@nothing.example", helo: "x").result == .none)
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "", helo: "mail.helo.example").result == .fail)
        let loop = await verifier.evaluate(ip: "192.0.2.10", sender: "a@loop.example", helo: "x")
        #expect(loop.result == .permerror && loop.lookups <= 11)
        let many = await verifier.evaluate(ip: "192.0.2.10", sender: "a@many.example", helo: "x")
        #expect(many.result == .permerror && many.queries <= 12)
        for (ip, result, mechanism) in [("192.0.2.77", SPFResult.pass, "mx"), ("192.0.2.78", .pass, "ptr"), ("192.0.2.79", .softfail, "~all")] {
            let outcome = await verifier.evaluate(ip: ip, sender: "a@mech.example", helo: "x")
            #expect(outcome.result == result && outcome.mechanism == mechanism, "\(ip): \(outcome.result) \(outcome.mechanism ?? "-")")
        }
        let loopback = await verifier.evaluate(ip: "127.0.0.1", sender: "a@soft.example", helo: "x")
        #expect(loopback.result == .pass && loopback.mechanism == "localhost")
        // A NUL would cut the sender (or, for an empty sender, the HELO name) short for
        // libspf2: never evaluated, and never answered from the outcome kept for the domain.
        for (sender, helo) in [("a\u{0}x@pass.example", "x"), ("a@pass.example\u{0}.other.example", "x"), ("", "mail.helo.example\u{0}x")] {
            let cut = await verifier.evaluate(ip: "192.0.2.10", sender: sender, helo: helo)
            #expect(cut.result == .none && cut.problem?.contains("NUL") == true, "\(cut)")
        }
        #expect(verifier.cachedOutcome(SPFQuery(clientAddress: "192.0.2.10", sender: "b@pass.example", helo: "x"))?.result == .pass)
        #expect(verifier.cachedOutcome(SPFQuery(clientAddress: "192.0.2.10", sender: "b\u{0}@pass.example", helo: "x")) == nil)
        // A NUL in the HELO name of a sender's check: the sender is checked as usual.
        #expect(await verifier.evaluate(ip: "198.51.100.1", sender: "c@pass.example", helo: "x\u{0}y").result == .fail)
    }

    /// RFC 7208 §5.5: a DNS error in the `ptr` mechanism's PTR lookup makes it not match
    /// (the next term decides), not a temperror.
    @Test func aPTRLookupThatFailsDoesNotMatch() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns, dnsTimeout: .seconds(1), deadline: .seconds(5)))
        defer { verifier.shutdown() }
        let outcome = await verifier.evaluate(ip: "192.0.2.99", sender: "a@ptrfail.example", helo: "x")
        #expect(outcome.result == .pass && outcome.mechanism == "ip4:192.0.2.99", "\(outcome)")
    }

    @Test func longRecordsEvaluateRight() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        // Their records come over TCP after a truncated UDP answer; both share dns_timeout,
        // which a loaded test machine's DNS server can use up: these tests are not about it.
        let verifier = try makeVerifier(verifierSettings(dns, dnsTimeout: .seconds(10), deadline: .seconds(15)))
        defer { verifier.shutdown() }
        let seventieth = await verifier.evaluate(ip: "198.51.100.70", sender: "a@seventy.example", helo: "x")
        #expect(seventieth.result == .pass && seventieth.mechanism == "ip4:198.51.100.70")
        let outsider = await verifier.evaluate(ip: "198.51.100.71", sender: "a@seventy.example", helo: "x")
        #expect(outsider.result == .fail && outsider.mechanism == "-all")
        let included = await verifier.evaluate(ip: "192.0.2.200", sender: "a@large.example", helo: "x")
        #expect(included.result == .pass && included.mechanism == "include:inc.large.example" && included.lookups == 1)
        let ip6 = await verifier.evaluate(ip: "2001:db8:c::1", sender: "a@large.example", helo: "x")
        #expect(ip6.result == .pass && ip6.mechanism == "ip6:2001:db8:c::/48")
        #expect(await verifier.evaluate(ip: "192.0.2.201", sender: "a@large.example", helo: "x").result == .fail)
        #expect(await verifier.evaluate(ip: "198.18.0.15", sender: "a@split.example", helo: "x").result == .pass)
        #expect(await verifier.evaluate(ip: "198.18.1.9", sender: "a@split.example", helo: "x").result == .pass)
        #expect(await verifier.evaluate(ip: "198.18.2.9", sender: "a@split.example", helo: "x").result == .fail)
        let huge = await verifier.evaluate(ip: "10.10.39.1", sender: "a@huge.example", helo: "x")
        #expect(huge.result == .pass && huge.mechanism == "ip4:10.10.39.1")
        #expect(await verifier.evaluate(ip: "10.99.0.1", sender: "a@huge.example", helo: "x").result == .fail)
        // Handed to the worker whole (its terms once took 750 KB, past what a worker reads,
        // and the worker ended with every evaluation it held): the 11th lookup is permerror.
        let terms = await verifier.evaluate(ip: "192.0.2.1", sender: "a@terms.example", helo: "x")
        #expect(terms.result == .permerror && terms.lookups == 11, "\(terms.result) \(terms.problem ?? "")")
        #expect(verifier.workerRestarts.isEmpty, "\(verifier.workerRestarts)")
        let junk = await verifier.evaluate(ip: "10.10.39.1", sender: "a@junk.example", helo: "x")
        #expect(junk.result == .permerror && (junk.problem?.utf8.count ?? 0) <= SPFOutcome.maxProblem)
    }

    @Test func macroBombGivesTheTruncatedNameInTime() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        // Their records come over TCP after a truncated UDP answer; both share dns_timeout,
        // which a loaded test machine's DNS server can use up: these tests are not about it.
        let verifier = try makeVerifier(verifierSettings(dns, dnsTimeout: .seconds(10), deadline: .seconds(15)))
        defer { verifier.shutdown() }
        #expect(bombDomain.utf8.count == 249)
        // The worker (one) is started first, so that what the bomb costs it is measured alone.
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@pass.example", helo: "x").result == .pass)
        let worker = try #require(await verifier.workerProcessIDs.first)
        var clock = clockid_t()
        #expect(clock_getcpuclockid(worker, &clock) == 0)
        func workerCPU() -> Int64 {
            var now = timespec()
            clock_gettime(clock, &now)
            return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        }
        // The name asked is the last whole labels within 253 octets: q61.q61.r50.bomb.example;
        // it does not exist, so the a: term matches nothing and -all decides.
        await dns.command("reset")
        let started = NIODeadline.now(), cpu = workerCPU()
        let outcome = await verifier.evaluate(ip: "192.0.2.1", sender: "a@" + bombDomain, helo: "x")
        let used = workerCPU() - cpu
        #expect(outcome.result == .fail && outcome.mechanism == "-all", "\(outcome.result) \(outcome.problem ?? "")")
        #expect(outcome.lookups == 1 && outcome.voidLookups == 1)
        #expect(await verifier.workerProcessIDs == [worker], "the same worker evaluated it")
        // What the issue asks: under 50 ms of the evaluating worker's CPU (the quadratic
        // expansion it guards against took over 60 s). The wall time, which includes the
        // test DNS server's TCP answer, gets room for the whole suite's load on two cores.
        #expect(used < 50_000_000, "the worker used \(used / 1_000_000) ms of CPU")
        #expect(NIODeadline.now() - started < .seconds(10))
        let queries = await dns.queryCount()
        // The 6 KB TXT over UDP (truncated) and again over TCP, then A of the truncated name.
        #expect(queries == 3, "\(queries)")
    }

    @Test func outcomesAreKeptOnWhatTheirRecordsRead() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns))
        defer { verifier.shutdown() }
        // A record without sender macros: a thousand senders of one domain share one evaluation.
        _ = await verifier.evaluate(ip: "192.0.2.10", sender: "first@pass.example", helo: "x")
        let before = verifier.evaluationCount
        for n in 0..<50 {
            let outcome = await verifier.evaluate(ip: "192.0.2.10", sender: "user\(n)@pass.example", helo: "h\(n).example")
            #expect(outcome.result == .pass && outcome.cached && outcome.query.sender == "user\(n)@pass.example")
        }
        #expect(verifier.evaluationCount == before)
        // Another client is another evaluation.
        _ = await verifier.evaluate(ip: "192.0.2.11", sender: "first@pass.example", helo: "x")
        #expect(verifier.evaluationCount == before + 1)
        // A domain that does not exist (an answer with no TTL of its own): kept too, for a
        // second at least, as the DNS cache keeps it. The second evaluation is asked on the
        // event loop as soon as the first is answered there; the pair is judged when the
        // first took under 0.9 s, timed on the loop too (the whole suite shares two cores):
        // up to three pairs, each of another domain, and a failure when none was that quick.
        var judged = false
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for n in 0..<3 where !judged {
            let count = verifier.evaluationCount
            @Sendable func query(_ sender: String) -> SPFQuery { SPFQuery(clientAddress: "192.0.2.10", sender: sender, helo: "x") }
            let (first, second, took) = try await loop.flatSubmit {
                let started = NIODeadline.now()
                return verifier.evaluate(query("a@nothing\(n).example"), deadline: started + .seconds(10), on: loop).flatMap { first in
                    let took = NIODeadline.now() - started
                    return verifier.evaluate(query("b@nothing\(n).example"), deadline: .now() + .seconds(10), on: loop).map { (first, $0, took) }
                }
            }.get()
            guard took < .milliseconds(900) else { continue }
            judged = true
            #expect(first.result == .none, "\(first.result) \(first.problem ?? "")")
            #expect(second.result == .none && second.cached && verifier.evaluationCount == count + 1)
        }
        #expect(judged, "no pair of evaluations took under 0.9 s")
        // %{l}: kept per sender.
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "alice@local.example", helo: "x").result == .pass)
        let bob = await verifier.evaluate(ip: "192.0.2.5", sender: "bob@local.example", helo: "x")
        #expect(bob.result == .fail && !bob.cached)
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "alice@local.example", helo: "x").cached)
        // %{h}: kept per HELO.
        #expect(await verifier.evaluate(ip: "192.0.2.60", sender: "a@perhelo.example", helo: "good.helo.example").result == .pass)
        let other = await verifier.evaluate(ip: "192.0.2.60", sender: "a@perhelo.example", helo: "bad.helo.example")
        #expect(other.result == .fail && !other.cached)
    }

    /// Swift's String equality is canonical equivalence ("é" as one code point or as "e"
    /// and a combining accent); a worker expands %{l} from the octets, so the outcome cache
    /// must not take one spelling for the other.
    @Test func outcomeKeysCompareOctets() {
        let composed = "jos\u{E9}", decomposed = "jose\u{301}"
        #expect(composed == decomposed, "Swift's own equality, the reason for this test")
        func key(domain: String = "example.org", local: String? = nil, helo: String? = nil) -> SPFVerifier.OutcomeKey {
            SPFVerifier.OutcomeKey(.init(identity: .mailfrom, client: IPAddress("192.0.2.1")!, upperNibbles: false,
                                         domain: domain, localPart: local, helo: helo))
        }
        #expect(key(local: composed) != key(local: decomposed))
        // Hashed by octets as well: every spelling of one text hashing alike would let a
        // sender fill one bucket of the cache with distinct keys.
        #expect(key(local: composed).fingerprint != key(local: decomposed).fingerprint)
        #expect(key(helo: composed + ".example") != key(helo: decomposed + ".example"))
        #expect(key(domain: composed + ".example") != key(domain: decomposed + ".example"))
        #expect(key(local: composed) == key(local: "jos\u{E9}"))
        #expect(key(local: composed) != key())
        #expect(Octets.equal(nil, nil) && !Octets.equal(composed, nil) && Octets.equal("", ""))
    }

    /// A record reached through a name of 8-bit octets (built from an SMTPUTF8 sender's
    /// %{l}) has that name as its `<domain>`: its `a` asks for the name's own octets.
    @Test func aNameOfEightBitOctetsIsItsOwnDomain() async throws {
        try await withVerifier { verifier in
            let own = await verifier.evaluate(ip: "192.0.2.55", sender: "ü@idn-l.example", helo: "x")
            #expect(own.result == .pass, "\(own.result) \(own.problem ?? "")")
            #expect(await verifier.evaluate(ip: "192.0.2.56", sender: "ü@idn-l.example", helo: "x").result == .fail)
            #expect(DNSName(text: "ü.example")!.macroText == Array("ü.example".utf8))
            #expect(DNSName(labels: [Array("a.b".utf8)[...], Array("example".utf8)[...]])!.macroText == Array("a\\046b.example".utf8))
        }
    }

    /// The Received-SPF mechanism= is the term that decided: an include whose record is
    /// decided by a term other than a "+" one does not match, and the term after it decides
    /// (it named "-include:…").
    @Test func theMechanismNamedIsTheOneThatDecided() async throws {
        try await withVerifier { verifier in
            let named = await verifier.evaluate(ip: "192.0.2.56", sender: "a@mechname.example", helo: "x")
            #expect(named.result == .fail && named.mechanism == "-all", "\(named.result) \(named.mechanism ?? "-")")
        }
    }

    /// libspf2 fetches the including record's explanation for an include that does not
    /// match, and uses its default after a redirect= to a record without exp=: the text
    /// fetched last was reported, the original domain's, which RFC 7208 §6.2 forbids after
    /// a redirect. The record that decided gives the explanation, or none.
    @Test func aRedirectDoesNotTakeTheOriginalsExplanation() async throws {
        try await withVerifier { verifier in
            let redirected = await verifier.evaluate(ip: "198.51.100.1", sender: "a@redir.example", helo: "x")
            #expect(redirected.result == .fail && redirected.explanation == nil, "\(redirected.result) \(redirected.explanation ?? "-")")
            let own = await verifier.evaluate(ip: "198.51.100.1", sender: "a@pass.example", helo: "x")
            #expect(own.result == .fail && own.explanation?.contains("is not one of pass.example's") == true, "\(own.explanation ?? "-")")
        }
    }

    /// A record parses to up to 36 times its size, and a worker keeps what it was sent until
    /// the evaluation ends: one evaluation may be sent three records of the largest size
    /// (permerror beyond), and one worker a budget across its evaluations (temperror for
    /// the evaluation that would pass it). Without them, a domain whose include chain held
    /// eleven 65 KB records made a worker hold ~26 MB per evaluation, and about forty such
    /// messages at once took it past its 1 GiB of address space.
    @Test func theRecordsAWorkerHoldsAreBounded() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone, delayMilliseconds: 100)
        defer { dns.stop() }
        var settings = verifierSettings(dns)
        settings.resultCacheTTL = .zero
        let verifier = try makeVerifier(settings)
        defer { verifier.shutdown() }
        let four = await verifier.evaluate(ip: "192.0.2.1", sender: "a@chain4.example", helo: "x")
        #expect(four.result == .fail, "\(four.result) \(four.problem ?? "")")
        let six = await verifier.evaluate(ip: "192.0.2.1", sender: "a@chain6.example", helo: "x")
        #expect(six.result == .permerror && six.problem?.contains("hold more than") == true, "\(six.result) \(six.problem ?? "")")

        settings.workerRecordBudget = 100_000
        let small = try makeVerifier(settings)
        defer { small.shutdown() }
        let outcomes = await withTaskGroup(of: SPFOutcome.self) { group in
            for _ in 0..<4 { group.addTask { await small.evaluate(ip: "192.0.2.1", sender: "a@chain2.example", helo: "x") } }
            return await group.reduce(into: [SPFOutcome]()) { $0.append($1) }
        }
        let results = outcomes.map { "\($0.result) \($0.problem ?? "")" }
        #expect(outcomes.contains { $0.result == .fail }, "\(results)")
        #expect(outcomes.contains { $0.result == .temperror && $0.problem?.contains("holds") == true }, "\(results)")
        #expect(await small.evaluate(ip: "192.0.2.1", sender: "a@chain2.example", helo: "x").result == .fail,
                "the budget is given back when evaluations end")
    }

    /// A sender longer than a worker takes (1,024 octets) was permerror without an
    /// evaluation, which accepts by default: any forged sender passed with a long enough
    /// local part. Its domain's record decides now; only a record or explanation that reads
    /// the local part (%{l}, %{s}) makes it permerror.
    @Test func anOverlongSenderIsJudgedByItsDomainsRecord() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        var settings = verifierSettings(dns)
        settings.resultCacheTTL = .zero
        let verifier = try makeVerifier(settings)
        defer { verifier.shutdown() }
        let local = String(repeating: "a", count: 1_100)
        let forged = await verifier.evaluate(ip: "198.51.100.1", sender: local + "@pass.example", helo: "x")
        #expect(forged.result == .fail, "\(forged.result) \(forged.problem ?? "")")
        #expect(forged.query.sender.utf8.count == 1_113, "the outcome is the sender's own")
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: local + "@pass.example", helo: "x").result == .pass)
        let reads = await verifier.evaluate(ip: "198.51.100.1", sender: local + "@readsl.example", helo: "x")
        #expect(reads.result == .permerror && reads.problem?.contains("reads it") == true, "\(reads.result) \(reads.problem ?? "")")
        // Only the explanation reads the local part: the result stands, without the text
        // (it was permerror, accepted by default: the bypass again).
        let explained = await verifier.evaluate(ip: "198.51.100.1", sender: local + "@hostile2.example", helo: "x")
        #expect(explained.result == .fail && explained.explanation == nil, "\(explained.result) \(explained.explanation ?? "-")")
    }

    /// The outcome cache's table holds fingerprints alone: an entry found under a query's
    /// fingerprint that was kept for another key (a fingerprint two keys share) is a miss,
    /// never that key's outcome.
    @Test func anOutcomeKeptUnderAnotherKeysFingerprintIsAMiss() async throws {
        try await withVerifier { verifier in
            let passing = SPFQuery(clientAddress: "192.0.2.10", sender: "a@pass.example", helo: "x")
            let other = SPFQuery(clientAddress: "192.0.2.10", sender: "a@soft.example", helo: "x")
            #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@pass.example", helo: "x").result == .pass)
            let kept = try #require(verifier.cachedOutcome(passing), "the pass is kept")
            #expect(verifier.cachedOutcome(other) == nil)
            let passingKey = verifier.baseKey(passing, client: passing.client!, domain: passing.domain)
            let otherKey = verifier.baseKey(other, client: other.client!, domain: other.domain)
            verifier.keep(kept, as: passingKey, under: otherKey.slot)
            #expect(verifier.cachedOutcome(other) == nil, "soft.example's query found pass.example's outcome")
            verifier.keep(kept, as: otherKey, under: otherKey.slot)
            #expect(verifier.cachedOutcome(other)?.result == .pass, "the same entry, kept for its own key, is a hit")
        }
    }

    @Test func aSenderDomainInULabelsIsAskedInALabels() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns))
        defer { verifier.shutdown() }
        #expect(SPFQuery(clientAddress: "192.0.2.90", sender: "user@bücher.example", helo: "x").checkedMailbox == "user@xn--bcher-kva.example")
        #expect(await verifier.evaluate(ip: "192.0.2.90", sender: "user@bücher.example", helo: "x").result == .pass)
        #expect(await verifier.evaluate(ip: "192.0.2.91", sender: "user@BÜCHER.example", helo: "x").result == .fail)
    }

    @Test func concurrentEvaluationsAgree() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        var settings = verifierSettings(dns, workers: 4, queue: 1000)
        settings.resultCacheTTL = .zero
        let verifier = try makeVerifier(settings)
        defer { verifier.shutdown() }
        let cases: [(String, String, SPFResult, String?)] = [
            ("192.0.2.10", "a@pass.example", .pass, nil),
            ("198.51.100.9", "b@pass.example", .fail, "198.51.100.9 is not one of pass.example's designated mail servers."),
            ("2001:db8::9", "c@soft.example", .softfail, nil),
            ("192.0.2.10", "d@broken.example", .permerror, nil),
            ("192.0.2.10", "e@many.example", .permerror, nil),
            ("192.0.2.10", "f@loop.example", .permerror, nil),
        ]
        let outcomes = await withTaskGroup(of: (Int, SPFOutcome).self) { group in
            for n in 0..<240 {
                let (ip, sender, _, _) = cases[n % cases.count]
                group.addTask { (n, await verifier.evaluate(ip: ip, sender: sender, helo: "h.example")) }
            }
            return await group.reduce(into: [(Int, SPFOutcome)]()) { $0.append($1) }
        }
        #expect(outcomes.count == 240)
        for (n, outcome) in outcomes {
            let (_, _, result, explanation) = cases[n % cases.count]
            #expect(outcome.result == result, "case \(n): \(outcome.result) \(outcome.problem ?? "")")
            if let explanation { #expect(outcome.explanation == explanation) }
        }
        #expect(verifier.evaluationCount == 240)
    }

    /// RFC 7208 §4.6.4's limits bound the queries one evaluation can cost, however the
    /// records are built: 10 terms, 10 MX names each, and no more.
    @Test func hostileRecordsCostBoundedQueries() async throws {
        var hostile: [String: Any] = [:]
        hostile["fan.example"] = [["TXT": "v=spf1 " + (1...10).map { "mx:m\($0).fan.example" }.joined(separator: " ") + " -all"]]
        for m in 1...10 {
            hostile["m\(m).fan.example"] = (1...10).map { ["MX": [$0, "h\($0).m\(m).fan.example"]] }
            for h in 1...10 { hostile["h\(h).m\(m).fan.example"] = [["AAAA": "2001:db8::\(h)"]] }
        }
        hostile["eleven.example"] = [["TXT": "v=spf1 mx -all"]] + (1...11).map { ["MX": [$0, "x\($0).eleven.example"]] }
        hostile["chain1.example"] = [["TXT": "v=spf1 include:chain2.example -all"]]
        for n in 2...14 { hostile["chain\(n).example"] = [["TXT": "v=spf1 include:chain\(n + 1).example -all"]] }
        let dns = try await LoopbackDNSServer.start(zone: hostile)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns))
        defer { verifier.shutdown() }
        await dns.command("reset")
        let fan = await verifier.evaluate(ip: "192.0.2.1", sender: "a@fan.example", helo: "x")
        #expect(fan.result == .fail && fan.lookups == 10)
        #expect(fan.queries <= 1 + 10 + 100)
        #expect(await dns.queryCount() <= 1 + 10 + 100)
        #expect(await verifier.evaluate(ip: "192.0.2.1", sender: "a@eleven.example", helo: "x").result == .permerror)
        let chain = await verifier.evaluate(ip: "192.0.2.1", sender: "a@chain1.example", helo: "x")
        #expect(chain.result == .permerror && chain.queries <= 11)
    }

    @Test func deadlineHoldsWhenDNSNeverAnswers() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        // 1 s per DNS question: the request after the slow ones asks the loopback DNS server
        // too, which a busy test run (two cores, every suite at once) once made answer later
        // than 300 ms. The slow ones still end at the 1.5 s evaluation deadline, well before
        // the engine's 5 s.
        let s = checkSettings(dns, workers: 2, dnsTimeout: .seconds(1), deadline: .milliseconds(1500))
        let check = try makeCheck(s)
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]], deadline: .seconds(5))
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let started = NIODeadline.now()
        var futures: [EventLoopFuture<(Decision, NIODeadline)>] = []
        for n in 0..<8 {
            switch engine.decide(request(sender: "u\(n)@slow.example", instance: "slow\(n)"), deadlines: DeadlineQueue(eventLoop: loop), logger: testLogger) {
            case .now(let d): futures.append(loop.makeSucceededFuture((d, NIODeadline.now())))
            case .later(let f): futures.append(f.map { ($0, NIODeadline.now()) })
            }
        }
        for future in futures {
            let (decision, answered) = try await future.get()
            #expect(answered - started < .seconds(3), "the evaluation deadline must bound the wait, took \(answered - started)")
            #expect(ResponseEncoder.actionText(decision.action).hasPrefix("DEFER_IF_PERMIT 4.7.24"))
            #expect(decision.reason == "spf=temperror" && !decision.deadlineExpired)
        }
        let after = try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "after"))
        guard case .prepend(let header) = after.action else { Issue.record("\(after.action)"); return }
        #expect(header.hasPrefix("Received-SPF: pass"))
    }

    /// backstop_spf_queue_depth counts what waits in every slot: each slot set the one gauge
    /// to its own queue's length, so with two workers it showed half of it (or less). Six
    /// evaluations wait in two slots whose workers cannot start; the total is six or more
    /// (other suites' evaluations may wait too, never fewer).
    @Test func theQueueDepthIsTheSumOverAllSlots() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        /// No worker ever starts: what is submitted waits in the slots' queues.
        struct NoWorkers: SPFSpawner {
            func spawn(executable: String, user: String) throws(SPFSpawnError) -> (fd: Int32, pid: pid_t) {
                throw SPFSpawnError("no workers in this test")
            }
            func killAndReap(_ pid: pid_t) -> Int32? { nil }
        }
        let verifier = SPFVerifier(settings: verifierSettings(dns, workers: 2, deadline: .seconds(5)), logger: testLogger,
                                   executable: backstopBinary, spawner: NoWorkers())
        defer { verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        // Room for a busy machine's DNS before they queue; they wait for a worker until then.
        let deadline = NIODeadline.now() + .seconds(5)
        let futures = (0..<6).map { n in
            verifier.evaluate(SPFQuery(clientAddress: "10.9.0.\(n + 1)", sender: "x@pass.example", helo: "h.example"),
                              deadline: deadline, on: loop)
        }
        // They queue once their record is fetched (the server's DNS), long before the deadline.
        var most = 0
        while NIODeadline.now() < deadline - .milliseconds(300) && most < 6 {
            most = max(most, SPFMetrics.queued.value)
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(most >= 6, "queued in two slots: \(most)")
        for future in futures { #expect(try await future.get().result == .temperror) }
    }

    @Test func fullQueueAnswersTemperrorAtOnce() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns, workers: 1, dnsTimeout: .seconds(1), deadline: .seconds(2), queue: 1))
        defer { verifier.shutdown() }
        // Every evaluation waits for an A record that never comes: the worker holds
        // maxInFlight (256), its queue one more, and the rest are refused at once. The worker
        // runs first (while one starts, evaluations wait in the queue).
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let warm = try await verifier.evaluate(SPFQuery(clientAddress: "192.0.2.10", sender: "a@pass.example", helo: "h.example"),
                                               deadline: .now() + .seconds(5), on: loop).get()
        #expect(warm.result == .pass, "\(warm)")
        let started = NIODeadline.now()
        let futures = (0..<(SPFWorkerSlot.maxInFlight + 3)).map { n in
            verifier.evaluate(SPFQuery(clientAddress: "10.0.\(n / 200).\(n % 200 + 1)", sender: "x@waits.example", helo: "h.example"),
                              deadline: started + .seconds(5), on: loop).map { ($0, NIODeadline.now()) }
        }
        var refused = 0
        for future in futures {
            let (outcome, answered) = try await future.get()
            #expect(outcome.result == .temperror)
            if outcome.problem?.contains("queue is full") == true {
                refused += 1
                #expect(answered - started < .milliseconds(500))
            }
        }
        #expect(refused == 2)
    }
}
