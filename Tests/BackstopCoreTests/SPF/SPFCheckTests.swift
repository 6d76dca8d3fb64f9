// SPFVerifier and SPFCheck against a real DNS server on loopback (Tests/Support/dns_server.py):
// results, explanations, the action mapping and headers, one evaluation per message, a DNS
// server that never answers, a hostile explanation, and the check running in the engine.

import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import BackstopCore

nonisolated(unsafe) private let zone: [String: Any] = [
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
    "mail.helo.example": [["TXT": "v=spf1 -all"]],
    "loop.example": [["TXT": "v=spf1 include:loop.example -all"]],
    // Over 512 octets: the UDP answer is truncated and the client asks again over TCP.
    "big.example": [["TXT": ["v=spf1 " + (1...40).map { "ip4:203.0.113.\($0)" }.joined(separator: " "), " -all"]]],
    "mech.example": [["TXT": "v=spf1 a:nohost.mech.example mx ptr ~all"], ["MX": [10, "mx1.mech.example"]]],
    "mx1.mech.example": [["A": "192.0.2.77"]],
    "78.2.0.192.in-addr.arpa": [["PTR": "h.mech.example"]],
    "h.mech.example": [["A": "192.0.2.78"]],
    "many.example": [["TXT": "v=spf1 " + (1...12).map { "a:h\($0).many.example" }.joined(separator: " ") + " -all"]],
]

private let logger = Logger(label: "test")

private func settings(_ server: LoopbackDNSServer, workers: Int = 2, dnsTimeout: TimeAmount = .seconds(2),
                      deadline: TimeAmount = .seconds(5), queue: Int = 100) -> SPFSettings {
    var s = SPFSettings()
    s.verifier.resolvers = [server.resolver]
    s.verifier.workers = workers
    s.verifier.dnsTimeout = dnsTimeout
    s.verifier.evaluationDeadline = deadline
    s.verifier.queueSize = queue
    s.receiver = "mx.test"
    s.verifier.receiver = "mx.test"
    s.authservID = "mx.test"
    return s
}

private func request(sender: String, client: String = "198.51.100.7", helo: String = "mail.helo.example",
                     instance: String = "", recipient: String = "rcpt@local.example", sasl: String = "") -> PolicyRequest {
    PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", client),
                   ("sender", sender), ("helo_name", helo), ("instance", instance), ("recipient", recipient),
                   ("sasl_username", sasl)])
}

private func decide(_ engine: PolicyEngine, _ request: PolicyRequest) async throws -> Decision {
    switch engine.decide(request, eventLoop: NIOSingletons.posixEventLoopGroup.next(), logger: logger) {
    case .immediate(let d): return d
    case .pending(let f): return try await f.get()
    }
}

@Suite("SPF check", .serialized)
struct SPFCheckTests {
    @Test func verifierPassFailAndExplanation() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let verifier = SPFVerifier(settings: settings(server).verifier)
        defer { verifier.shutdown() }
        let pass = await verifier.evaluate(ip: "192.0.2.10", sender: "a@pass.example", helo: "x.example")
        #expect(pass.result == .pass)
        #expect(pass.mechanism == "ip4:192.0.2.0/24")
        let fail = await verifier.evaluate(ip: "::ffff:198.51.100.1", sender: "a@pass.example", helo: "x.example")
        #expect(fail.result == .fail)
        #expect(fail.mechanism == "-all")
        #expect(fail.explanation == "198.51.100.1 is not one of pass.example's designated mail servers.")
        let report = SPFReport.describe(fail, header: nil)
        #expect(report.split(separator: "\n").first == "fail")
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@soft.example", helo: "x").result == .softfail)
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@broken.example", helo: "x").result == .permerror)
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "a@nothing.example", helo: "x").result == .none)
        #expect(await verifier.evaluate(ip: "192.0.2.10", sender: "", helo: "mail.helo.example").result == .fail)
        let loop = await verifier.evaluate(ip: "192.0.2.10", sender: "a@loop.example", helo: "x")
        #expect(loop.result == .permerror)
        #expect(loop.lookups <= 11)
        let many = await verifier.evaluate(ip: "192.0.2.10", sender: "a@many.example", helo: "x")
        #expect(many.result == .permerror)   // 12 a: terms with no address: void lookups, then the limit
        #expect(many.queries <= 12)
        // The Received-SPF mechanism names the term that matched.
        for (ip, result, mechanism) in [("192.0.2.77", SPFResult.pass, "mx"), ("192.0.2.78", .pass, "ptr"), ("192.0.2.79", .softfail, "~all")] {
            let outcome = await verifier.evaluate(ip: ip, sender: "a@mech.example", helo: "x")
            #expect(outcome.result == result && outcome.mechanism == mechanism, "\(ip): \(outcome.result) \(outcome.mechanism ?? "-")")
        }
        // libspf2's own rule, documented in docs/spf-conformance.md.
        let loopback = await verifier.evaluate(ip: "127.0.0.1", sender: "a@soft.example", helo: "x")
        #expect(loopback.result == .pass && loopback.mechanism == "localhost")
        #expect(await verifier.evaluate(ip: "203.0.113.40", sender: "a@big.example", helo: "x").result == .pass)
        #expect(await verifier.evaluate(ip: "203.0.113.41", sender: "a@big.example", helo: "x").result == .fail)
    }

    /// Each worker owns its libspf2 server; many evaluations at once on several workers must
    /// give exactly what they give one at a time.
    @Test func concurrentEvaluationsAgree() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let verifier = SPFVerifier(settings: settings(server, workers: 4, queue: 1000).verifier)
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
            #expect(outcome.result == result, "case \(n): \(outcome.result) \(outcome.problem ?? "") \(outcome.elapsed)")
            if let explanation { #expect(outcome.explanation == explanation) }
        }
    }

    @Test func commandLineReport() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let s = settings(server)
        let pass = await SPFReport.run(settings: s, ip: "192.0.2.10", sender: "a@pass.example", helo: "mail.pass.example")
        let lines = pass.split(separator: "\n").map(String.init)
        #expect(lines.first == "pass")
        #expect(lines.contains("mechanism: ip4:192.0.2.0/24"))
        #expect(lines.contains { $0.hasPrefix("header: Received-SPF: pass (mx.test: domain of a@pass.example designates 192.0.2.10") })
        #expect(lines.contains { $0.hasPrefix("time: ") })
        let bounce = await SPFReport.run(settings: s, ip: "192.0.2.10", sender: "", helo: "mail.helo.example")
        #expect(bounce.hasPrefix("fail\nmechanism: -all\nheader: -\ntime: "))
        #expect(bounce.contains("\nidentity: mailfrom postmaster@mail.helo.example\n"))
        #expect(bounce.contains("answer: 550 5.7.23 SPF fail: mail.helo.example does not allow 192.0.2.10"))
    }

    @Test func actionMappingAndHeaders() throws {
        var s = SPFSettings()
        s.receiver = "mx.test"
        s.authservID = "mx.test"
        s.explanationURL = "https://why.example/?d={domain}&ip={client}"
        let verifier = SPFVerifier(settings: s.verifier)
        defer { verifier.shutdown() }
        let check = SPFCheck(settings: s, verifier: verifier)
        let query = SPFQuery(clientAddress: "192.0.2.10", sender: "a@pass.example", helo: "mail.pass.example")
        var pass = SPFOutcome(result: .pass, query: query, mechanism: "ip4:192.0.2.0/24")
        let header = try #require(check.header(for: pass))
        #expect(header == "Received-SPF: pass (mx.test: domain of a@pass.example designates 192.0.2.10 as permitted sender) client-ip=192.0.2.10; envelope-from=\"a@pass.example\"; helo=mail.pass.example; receiver=mx.test; identity=mailfrom; mechanism=\"ip4:192.0.2.0/24\";")
        #expect(check.verdict(for: SPFEvaluated(mailfrom: pass), header: true) == Verdict(.prepend(header), reason: "spf=pass"))
        #expect(check.verdict(for: SPFEvaluated(mailfrom: pass), header: false).action == .dunno)

        var fail = SPFOutcome(result: .fail, query: query, mechanism: "-all", explanation: "Not\r\nhere action=OK")
        let refused = check.verdict(for: SPFEvaluated(mailfrom: fail), header: true)
        #expect(refused.reason == "spf=fail")
        guard case .reply(550, "5.7.23", let text) = refused.action else { Issue.record("\(refused.action)"); return }
        #expect(text.contains("SPF fail") && text.contains("pass.example") && text.contains("192.0.2.10"))
        let wire = String(decoding: ResponseEncoder.encode(refused.action), as: UTF8.self)
        #expect(wire.split(separator: "\n").filter { $0.hasPrefix("action=") }.count == 1)
        #expect(wire.hasSuffix("\n\n") && wire.dropLast(2).allSatisfy { $0 != "\n" && $0 != "\r" })
        fail.explanation = nil
        let withURL = ResponseEncoder.actionText(check.verdict(for: SPFEvaluated(mailfrom: fail), header: true).action)
        #expect(withURL.contains("https://why.example/?d=pass.example&ip=192.0.2.10"))

        let temp = check.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .temperror, query: query)), header: true)
        #expect(ResponseEncoder.actionText(temp.action).hasPrefix("DEFER_IF_PERMIT 4.7.24 SPF temperror"))
        let perm = check.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .permerror, query: query)), header: true)
        guard case .prepend(let permHeader) = perm.action else { Issue.record("\(perm.action)"); return }
        #expect(permHeader.hasPrefix("Received-SPF: permerror ("))

        var strictSettings = s
        strictSettings.strictDomains = ["pass.example"]
        strictSettings.actions[.permerror] = try PolicyAction(parsing: "550 5.7.24 SPF permerror for {domain}")
        strictSettings.header = .authenticationResults
        let strict = SPFCheck(settings: strictSettings, verifier: verifier)
        let soft = strict.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .softfail, query: query)), header: true)
        #expect(soft.action.keyword == "550")
        #expect(soft.reason == "spf=softfail strict_domain")
        #expect(strict.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .permerror, query: query)), header: true).action
                == .reply(code: 550, enhanced: "5.7.24", text: "SPF permerror for pass.example"))
        pass.query.helo = "we\"ird (helo)"
        #expect(strict.header(for: pass) == "Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@pass.example")
        #expect(SPFHeader.receivedSPF(pass, receiver: "mx.test").contains("helo=\"we\\\"ird (helo)\";"))
    }

    @Test func oneEvaluationPerMessage() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let s = settings(server)
        let check = try #require(try s.makeCheck(CheckBuildContext(logger: logger)) as? SPFCheck)
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        await server.command("reset")
        let decisions = try await withThrowingTaskGroup(of: Decision.self) { group in
            for n in 0..<50 {
                group.addTask {
                    try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "4a1b.2c3d",
                                                     recipient: "user\(n)@local.example"))
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let prepends = decisions.filter { if case .prepend = $0.action { true } else { false } }
        #expect(prepends.count == 1)
        #expect(decisions.filter { $0.action == .dunno }.count == 49)
        #expect(prepends.first?.reason == "spf=pass")
        // The recipient never appears in the header (pypolicyd-spf's BCC leak).
        if case .prepend(let header) = prepends.first?.action { #expect(!header.contains("local.example")) }
        #expect(check.verifier.evaluationCount == 1)
        #expect(await server.queryCount() == 1)
        // Another message from the same client and sender within result_cache_ttl: no new evaluation.
        let other = try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "other"))
        if case .prepend = other.action {} else { Issue.record("expected a header for the new message, got \(other.action)") }
        #expect(check.verifier.evaluationCount == 1)
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
        let server = try await LoopbackDNSServer.start(zone: hostile)
        defer { server.stop() }
        let verifier = SPFVerifier(settings: settings(server).verifier)
        defer { verifier.shutdown() }
        await server.command("reset")
        let fan = await verifier.evaluate(ip: "192.0.2.1", sender: "a@fan.example", helo: "x")
        #expect(fan.result == .fail)
        #expect(fan.lookups == 10)
        #expect(fan.queries <= 1 + 10 + 100)
        #expect(await server.queryCount() <= 1 + 10 + 100)
        let eleven = await verifier.evaluate(ip: "192.0.2.1", sender: "a@eleven.example", helo: "x")
        #expect(eleven.result == .permerror)
        let chain = await verifier.evaluate(ip: "192.0.2.1", sender: "a@chain1.example", helo: "x")
        #expect(chain.result == .permerror)
        #expect(chain.queries <= 11)
    }

    @Test func reloadKeepsVerifierAndCaches() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let s = settings(server)
        let first = try #require(try s.makeCheck(CheckBuildContext(logger: logger)) as? SPFCheck)
        defer { first.verifier.shutdown() }
        let r1 = try await decide(PolicyEngine(stages: [.rcpt: [first]]), request(sender: "a@pass.example", client: "192.0.2.10", instance: "r1"))
        if case .prepend = r1.action {} else { Issue.record("expected a header, got \(r1.action)") }
        var changed = s
        changed.actions[.permerror] = .reply(code: 550, enhanced: "5.7.24", text: "x")
        let second = try #require(try changed.makeCheck(CheckBuildContext(logger: logger, previous: first)) as? SPFCheck)
        #expect(second.verifier === first.verifier)
        // The same message, next recipient, after the reload: still one header.
        let r2 = try await decide(PolicyEngine(stages: [.rcpt: [second]]),
                                  request(sender: "a@pass.example", client: "192.0.2.10", instance: "r1", recipient: "x@local.example"))
        #expect(r2.action == .dunno)
        var resized = s
        resized.verifier.workers = 3
        let third = try #require(try resized.makeCheck(CheckBuildContext(logger: logger, previous: second)) as? SPFCheck)
        defer { third.verifier.shutdown() }
        #expect(third.verifier !== first.verifier)
    }

    @Test func deadlineHoldsWhenDNSNeverAnswers() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let s = settings(server, workers: 2, dnsTimeout: .milliseconds(300), deadline: .milliseconds(700))
        let check = try #require(try s.makeCheck(CheckBuildContext(logger: logger, deadline: .seconds(5))) as? SPFCheck)
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]], deadline: .seconds(5))
        // All asked at once; each answer's time is taken where it is produced (on the event
        // loop), not when a busy test machine gets round to resuming this task.
        let loop = NIOSingletons.posixEventLoopGroup.next()
        let started = NIODeadline.now()
        var futures: [EventLoopFuture<(Decision, NIODeadline)>] = []
        for n in 0..<8 {   // more than the workers: the rest wait in the queue
            switch engine.decide(request(sender: "u\(n)@slow.example", instance: "slow\(n)"), eventLoop: loop, logger: logger) {
            case .immediate(let d): futures.append(loop.makeSucceededFuture((d, NIODeadline.now())))
            case .pending(let f): futures.append(f.map { ($0, NIODeadline.now()) })
            }
        }
        var decisions: [Decision] = []
        for future in futures {
            let (decision, answered) = try await future.get()
            decisions.append(decision)
            #expect(answered - started < .seconds(3), "the evaluation deadline must bound the wait, took \(answered - started)")
        }
        for d in decisions {
            #expect(ResponseEncoder.actionText(d.action).hasPrefix("DEFER_IF_PERMIT 4.7.24"))
            #expect(d.reason == "spf=temperror")
            #expect(!d.deadlineExpired, "the check's own temperror must answer before the engine's deadline")
        }
        // The workers are free again.
        let after = try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "after"))
        if case .prepend(let header) = after.action { #expect(header.hasPrefix("Received-SPF: pass")) } else {
            Issue.record("expected a pass header after the timeouts, got \(after.action)")
        }
    }

    @Test func fullQueueAnswersTemperrorAtOnce() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let s = settings(server, workers: 1, dnsTimeout: .milliseconds(400), deadline: .milliseconds(500), queue: 1)
        let verifier = SPFVerifier(settings: s.verifier)
        defer { verifier.shutdown() }
        let loop = NIOSingletons.posixEventLoopGroup.next()
        let deadline = NIODeadline.now() + .seconds(5)
        let futures = (0..<4).map { n in
            verifier.evaluate(SPFQuery(clientAddress: "192.0.2.1", sender: "x\(n)@slow.example", helo: "h.example"),
                              deadline: deadline, on: loop)
        }
        var problems: [String] = []
        for future in futures {
            let outcome = try await future.get()
            #expect(outcome.result == .temperror)
            problems.append(outcome.problem ?? "")
        }
        #expect(problems.contains { $0.contains("queue is full") })
    }

    @Test func hostileExplanationGivesOneResponse() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        let check = try #require(try settings(server).makeCheck(CheckBuildContext(logger: logger)) as? SPFCheck)
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        for sender in ["a@hostile.example", "action=OK@hostile2.example"] {
            let d = try await decide(engine, request(sender: sender, instance: sender))
            #expect(d.reason == "spf=fail")
            let wire = String(decoding: ResponseEncoder.encode(d.action), as: UTF8.self)
            // Exactly one response: one line, then the empty line that ends it.
            #expect(wire.split(separator: "\n", omittingEmptySubsequences: false).filter { $0.hasPrefix("action=") }.count == 1)
            #expect(wire.filter { $0 == "\n" }.count == 2 && wire.hasSuffix("\n\n"))
            #expect(!wire.contains("\r"))
            #expect(wire.hasPrefix("action=550 5.7.23 SPF fail"))
        }
    }

    @Test func skipRules() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        var s = settings(server)
        s.trustedNetworks = NetworkList([CIDR("127.0.0.0/8")!, CIDR("172.17.0.0/16")!])
        s.skipSenderDomains = ["pass.example"]
        let check = try #require(try s.makeCheck(CheckBuildContext(logger: logger)) as? SPFCheck)
        defer { check.verifier.shutdown() }
        let context = CheckContext(eventLoop: NIOSingletons.posixEventLoopGroup.next(), deadline: .now() + .seconds(5), logger: logger)
        func reason(_ r: PolicyRequest) -> String {
            if case .done(let verdict) = check.evaluate(r, context: context), verdict.isNoOpinion { return verdict.reason }
            return "evaluated"
        }
        #expect(reason(request(sender: "a@hostile.example", sasl: "alice")) == "spf=skipped authenticated")
        #expect(reason(request(sender: "a@hostile.example", client: "172.17.0.1")) == "spf=skipped trusted_network")
        #expect(reason(request(sender: "a@hostile.example", client: "::ffff:127.0.0.1")) == "spf=skipped trusted_network")
        #expect(reason(request(sender: "a@sub.pass.example")) == "spf=skipped sender_domain")
        #expect(check.verifier.evaluationCount == 0)
        #expect(reason(request(sender: "a@hostile.example")) == "evaluated")
    }

    @Test func heloCheckRefusesFirst() async throws {
        let server = try await LoopbackDNSServer.start(zone: zone)
        defer { server.stop() }
        var s = settings(server)
        s.heloCheck = true
        let check = try #require(try s.makeCheck(CheckBuildContext(logger: logger)) as? SPFCheck)
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        let d = try await decide(engine, request(sender: "a@soft.example", helo: "mail.helo.example", instance: "h1"))
        #expect(d.reason == "spf=fail identity=helo")
        #expect(d.action.keyword == "550")
        // A bounce checks postmaster@helo once.
        let bounce = try await decide(engine, request(sender: "", helo: "mail.helo.example", instance: "h2"))
        #expect(bounce.reason == "spf=fail identity=helo")
    }

    @Test func configurationSection() throws {
        let text = """
        [policy]
        rcpt = ["spf"]
        [spf]
        resolvers = ["127.0.0.1:5353", "[::1]:53"]
        dns_timeout = "1s"
        evaluation_deadline = "4s"
        workers = 2
        helo_check = true
        header = "authentication-results"
        authserv_id = "mx.example.org"
        receiver = "mx.example.org"
        trusted_networks = ["10.0.0.0/8"]
        strict_domains = ["Bank.example."]
        [spf.actions]
        permerror = "550 5.7.24 SPF permerror: {domain}"
        """
        let config = try Configuration.parse(text, file: "test.toml")
        let s = SPFSettings.from(config)
        #expect(s.verifier.resolvers == [DNSResolverAddress(host: "127.0.0.1", port: 5353), DNSResolverAddress(host: "::1", port: 53)])
        #expect(s.verifier.dnsTimeout == .seconds(1) && s.verifier.evaluationDeadline == .seconds(4) && s.verifier.workers == 2)
        #expect(s.heloCheck && s.header == .authenticationResults && s.authservID == "mx.example.org")
        #expect(s.strictDomains == ["bank.example"])
        #expect(s.trustedNetworks.contains("10.1.2.3") && !s.trustedNetworks.contains("127.0.0.1"))
        #expect(s.actions[.permerror] == .reply(code: 550, enhanced: "5.7.24", text: "SPF permerror: {domain}"))
        #expect(s.actions[.fail] == SPFSettings.defaultActions[.fail])

        // The example configuration's [spf] section is valid and shows the defaults.
        let example = LoopbackDNSServer.packageRoot.appendingPathComponent("examples/backstop.toml").path
        let exampleSettings = SPFSettings.from(try Configuration.load(path: example))
        #expect(exampleSettings.actions == SPFSettings.defaultActions)
        #expect(exampleSettings.verifier == SPFSettings().verifier)

        let bad = "[policy]\nrcpt = [\"spf\"]\n[spf]\nheader = \"x-spf\"\nresolvers = [\"dns.example\"]\nworkerz = 3\n"
        do {
            _ = try Configuration.parse(bad, file: "bad.toml")
            Issue.record("expected errors")
        } catch {
            let text = "\(error)"
            #expect(text.contains("header") && text.contains("resolvers") && text.contains("workerz"))
        }
    }
}
