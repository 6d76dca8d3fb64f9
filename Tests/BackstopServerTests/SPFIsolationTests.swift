// SPF process isolation (spf.isolation = "process") with the real `backstop spf-worker`
// binary (.build/debug/backstop) resolving against Tests/Support/dns_server.py: the same
// outcomes as thread isolation, a worker killed (-9) or stopped (-STOP) costs one
// temperror and is replaced, a worker spawned as root runs as worker_user. With
// BACKSTOP_SPF_ISOLATION_BENCH=N set, also measures N evaluations in each mode.

import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import BackstopCore
@testable import BackstopServer

@Suite(.serialized) struct SPFIsolationTests {
    static var zone: [String: Any] { [
        "example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]],
        "soft.example": [["TXT": "v=spf1 a:host.soft.example ~all"]],
        "host.soft.example": [["A": "192.0.2.9"]],
        "inc.example": [["TXT": "v=spf1 include:example.org ?all"]],
        "mx.example": [["TXT": "v=spf1 mx -all"], ["MX": [10, "mail.mx.example"]]],
        "mail.mx.example": [["A": "192.0.2.20"]],
        "bad.example": [["TXT": "v=spf1 ip4:300.1.1.1 -all"]],
        "none.example": [["TXT": "hello world"]],
        "exp.example": [["TXT": "v=spf1 -all exp=why.exp.example"]],
        "why.exp.example": [["TXT": "%{i} may not send for %{d}"]],
        "two.example": [["TXT": "v=spf1 -all"], ["TXT": "v=spf1 +all"]],
        "slow.example": ["TIMEOUT"],
    ] }

    static func settings(_ dns: SPFTestDNS, _ isolation: SPFVerifier.Isolation, workers: Int = 1,
                         deadline: TimeAmount = .seconds(2), dnsTimeout: TimeAmount = .milliseconds(500)) -> SPFVerifier.Settings {
        var s = SPFVerifier.Settings()
        s.resolvers = [DNSResolverAddress(host: "127.0.0.1", port: dns.port)]
        s.receiver = "mx.test"
        s.workers = workers
        s.isolation = isolation
        s.evaluationDeadline = deadline
        s.dnsTimeout = dnsTimeout
        return s
    }

    static func processVerifier(_ settings: SPFVerifier.Settings) throws -> SPFVerifier {
        guard FileManager.default.isExecutableFile(atPath: backstopBinary) else {
            throw ServerError("\(backstopBinary) is missing: run swift build --build-tests first")
        }
        let verifier = SPFVerifier(settings: settings, logger: testLogger, workerExecutable: backstopBinary)
        #expect(verifier.isolated)
        return verifier
    }

    /// Waits until `pid` has ended (a zombie nobody reaped yet, or gone).
    static func waitForDeath(_ pid: Int32) async {
        for _ in 0..<200 {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return }
            if let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] == "Z" { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    static func state(_ pid: Int32) -> Character? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(close, offsetBy: 2)]
    }

    @Test func processModeAnswersAsThreadModeDoes() async throws {
        let dns = try await SPFTestDNS.start(zone: SPFIsolationTests.zone)
        defer { dns.stop() }
        let cases: [(ip: String, sender: String, helo: String, expected: SPFResult)] = [
            ("192.0.2.5", "alice@example.org", "mail.example.org", .pass),
            ("198.51.100.1", "alice@example.org", "mail.example.org", .fail),
            ("192.0.2.9", "bob@soft.example", "h.soft.example", .pass),
            ("198.51.100.9", "bob@soft.example", "h.soft.example", .softfail),
            ("192.0.2.7", "c@inc.example", "x.inc.example", .pass),
            ("203.0.113.7", "c@inc.example", "x.inc.example", .neutral),
            ("192.0.2.20", "d@mx.example", "mail.mx.example", .pass),
            ("::ffff:198.51.100.20", "d@mx.example", "mail.mx.example", .fail),
            ("192.0.2.1", "e@bad.example", "bad.example", .permerror),
            ("192.0.2.1", "f@none.example", "none.example", .none),
            ("198.51.100.3", "g@exp.example", "exp.example", .fail),
            ("192.0.2.1", "h@two.example", "two.example", .permerror),
            ("192.0.2.1", "", "example.org", .pass),
            ("192.0.2.1", "i@slow.example", "slow.example", .temperror),
        ]
        let threads = SPFVerifier(settings: SPFIsolationTests.settings(dns, .thread), logger: testLogger, workerExecutable: backstopBinary)
        #expect(!threads.isolated)
        let processes = try SPFIsolationTests.processVerifier(SPFIsolationTests.settings(dns, .process, workers: 2))
        defer { threads.shutdown(); processes.shutdown() }
        for c in cases {
            let a = await threads.evaluate(ip: c.ip, sender: c.sender, helo: c.helo)
            let b = await processes.evaluate(ip: c.ip, sender: c.sender, helo: c.helo)
            #expect(a.result == c.expected, "\(c)")
            var (x, y) = (a, b)
            x.elapsed = .zero
            y.elapsed = .zero
            #expect(x == y, "thread: \(a)\nprocess: \(b)")
        }
        let explained = await processes.evaluate(ip: "198.51.100.3", sender: "g@exp.example", helo: "exp.example")
        #expect(explained.explanation == "198.51.100.3 may not send for exp.example")
        #expect(processes.workerProcessIDs.count >= 1)
        #expect(processes.workerRestartCount == 0)
        #expect(processes.evaluationCount == cases.count + 1)
        #expect(processes.networkQueryCount > 0)

        // Through the server's path (event loop, deadline timer) as well.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let outcome = try await processes.evaluate(SPFQuery(clientAddress: "192.0.2.5", sender: "a@example.org", helo: "h.example.org"),
                                                   deadline: .now() + .seconds(2), on: loop).get()
        #expect(outcome.result == .pass)
        #expect(outcome.mechanism == "ip4:192.0.2.0/24")
    }

    @Test func killedWorkerCostsOneAnswerAndIsReplaced() async throws {
        let dns = try await SPFTestDNS.start(zone: SPFIsolationTests.zone)
        defer { dns.stop() }
        let verifier = try SPFIsolationTests.processVerifier(
            SPFIsolationTests.settings(dns, .process, deadline: .seconds(4), dnsTimeout: .seconds(3)))
        defer { verifier.shutdown() }
        #expect(verifier.workerProcessIDs.isEmpty, "spawned before the first evaluation")
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org").result == .pass)
        let first = try #require(verifier.workerProcessIDs.first)

        // Between evaluations: the next one does not even notice.
        #expect(kill(first, SIGKILL) == 0)
        await SPFIsolationTests.waitForDeath(first)
        let after = await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org")
        #expect(after.result == .pass, "\(after)")
        let second = try #require(verifier.workerProcessIDs.first)
        #expect(second != first)
        #expect(SPFIsolationTests.state(first) == nil, "the killed worker was not reaped")
        #expect(verifier.workerRestartCount == 1)

        // During an evaluation (waiting on a DNS server that never answers): that one
        // evaluation is temperror, at once rather than at its deadline.
        let started = NIODeadline.now()
        async let lost = verifier.evaluate(ip: "192.0.2.1", sender: "x@slow.example", helo: "slow.example")
        try await Task.sleep(for: .milliseconds(500))
        #expect(kill(second, SIGKILL) == 0)
        let outcome = await lost
        let took = NIODeadline.now() - started
        #expect(outcome.result == .temperror)
        #expect(outcome.problem?.contains("killed by signal 9") == true, "\(outcome)")
        #expect(took < .seconds(3), "answered after \(took)")
        #expect(verifier.workerRestartCount == 2)

        for _ in 0..<3 {
            #expect(await verifier.evaluate(ip: "198.51.100.1", sender: "a@example.org", helo: "h.example.org").result == .fail)
        }
        let third = try #require(verifier.workerProcessIDs.first)
        #expect(third != second && third != first)

        // Shutting the verifier down (a reload that replaced it) ends and reaps its workers.
        verifier.shutdown()
        for _ in 0..<200 where SPFIsolationTests.state(third) != nil {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(SPFIsolationTests.state(third) == nil, "worker \(third) outlived its verifier")
    }

    @Test func stoppedWorkerIsTimedOutAndReplaced() async throws {
        let dns = try await SPFTestDNS.start(zone: SPFIsolationTests.zone)
        defer { dns.stop() }
        let verifier = try SPFIsolationTests.processVerifier(SPFIsolationTests.settings(dns, .process, deadline: .seconds(1)))
        defer { verifier.shutdown() }
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org").result == .pass)
        let stopped = try #require(verifier.workerProcessIDs.first)
        #expect(kill(stopped, SIGSTOP) == 0)

        let started = NIODeadline.now()
        let outcome = await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org")
        let took = NIODeadline.now() - started
        #expect(outcome.result == .temperror)
        #expect(outcome.problem == "SPF worker did not answer in time; restarted")
        #expect(took >= .milliseconds(900) && took < .milliseconds(1_500), "answered after \(took)")
        #expect(SPFIsolationTests.state(stopped) == nil, "the stopped worker was not killed and reaped")
        #expect(verifier.workerRestartCount == 1)

        // The server's path: the event loop's timer and the slot agree on temperror in time.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let again = try await verifier.evaluate(SPFQuery(clientAddress: "192.0.2.5", sender: "a@example.org", helo: "h.example.org"),
                                                deadline: .now() + .seconds(1), on: loop).get()
        #expect(again.result == .pass)
        let replacement = try #require(verifier.workerProcessIDs.first)
        #expect(replacement != stopped)
        #expect(kill(replacement, SIGSTOP) == 0)
        let onLoop = NIODeadline.now()
        let late = try await verifier.evaluate(SPFQuery(clientAddress: "192.0.2.5", sender: "a@example.org", helo: "h.example.org"),
                                               deadline: .now() + .seconds(1), on: loop).get()
        #expect(late.result == .temperror)
        #expect(NIODeadline.now() - onLoop < .milliseconds(1_500))
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org").result == .pass)
        #expect(verifier.workerProcessIDs.first != replacement)
    }

    @Test(.enabled(if: geteuid() == 0, "only root can test dropping root"))
    func workerSpawnedAsRootRunsAsWorkerUser() async throws {
        let dns = try await SPFTestDNS.start(zone: SPFIsolationTests.zone)
        defer { dns.stop() }
        let nobody = try #require(getpwnam("nobody"))
        let (uid, gid) = (nobody.pointee.pw_uid, nobody.pointee.pw_gid)
        var settings = SPFIsolationTests.settings(dns, .process)
        settings.workerUser = "nobody"
        let verifier = try SPFIsolationTests.processVerifier(settings)
        defer { verifier.shutdown() }
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org").result == .pass)
        let pid = try #require(verifier.workerProcessIDs.first)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func ids(_ key: String) -> [String] {
            status.split(separator: "\n").first { $0.hasPrefix(key + ":") }.map {
                $0.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            } ?? ["missing"]
        }
        #expect(ids("Uid") == Array(repeating: String(uid), count: 4), "\(status)")
        #expect(ids("Gid") == Array(repeating: String(gid), count: 4), "\(status)")
        #expect(ids("Groups").allSatisfy { $0 == String(gid) }, "\(status)")
        #expect(ids("CapEff") == ["0000000000000000"], "\(status)")
        // Nothing of this process's (pipes to dns_server.py, sockets) leaked into the worker:
        // stdin (/dev/null), stdout and stderr, the socketpair's two descriptors, perhaps a DNS socket.
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { Int($0) }.sorted()
        #expect(fds.count <= 6 && fds.allSatisfy { $0 <= 5 }, "worker descriptors: \(fds)")

        // A worker_user that cannot be used: the worker refuses to run as root.
        var broken = SPFIsolationTests.settings(dns, .process)
        broken.workerUser = "backstop-no-such-user"
        let refused = try SPFIsolationTests.processVerifier(broken)
        defer { refused.shutdown() }
        let outcome = await refused.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org")
        #expect(outcome.result == .temperror)
        #expect(outcome.problem?.contains("exited with status 77") == true, "\(outcome)")
        #expect(refused.workerRestartCount == 1)
    }

    @Test func withoutAnExecutableProcessModeFallsBackToThreads() async throws {
        var settings = SPFVerifier.Settings()
        settings.isolation = .process
        let verifier = SPFVerifier(settings: settings, logger: testLogger, workerExecutable: nil)
        defer { verifier.shutdown() }
        #expect(!verifier.isolated)
        #expect(await verifier.evaluate(ip: "192.0.2.1", sender: "a@b", helo: "x").result == .none)
    }

    @Test func configurationKeys() throws {
        let good = try Configuration.parse("[spf]\nisolation = \"thread\"\nworker_user = \"spf\"\n", file: "t.toml")
        let spf = try #require(good.checks["spf"] as? SPFSettings)
        #expect(spf.verifier.isolation == .thread)
        #expect(spf.verifier.workerUser == "spf")
        #expect(SPFSettings().verifier.isolation == .process)
        #expect(SPFSettings().verifier.workerUser == "nobody")
        for bad in ["isolation = \"fork\"", "worker_user = \"root\"", "worker_user = \"\""] {
            #expect(throws: ConfigError.self, "\(bad)") { try Configuration.parse("[spf]\n\(bad)\n", file: "t.toml") }
        }
    }

    /// BACKSTOP_SPF_ISOLATION_BENCH=2000 swift test --filter SPFIsolationTests/measure
    @Test(.enabled(if: ProcessInfo.processInfo.environment["BACKSTOP_SPF_ISOLATION_BENCH"] != nil))
    func measure() async throws {
        let count = Int(ProcessInfo.processInfo.environment["BACKSTOP_SPF_ISOLATION_BENCH"] ?? "") ?? 2_000
        let dns = try await SPFTestDNS.start(zone: SPFIsolationTests.zone)
        defer { dns.stop() }
        for isolation in [SPFVerifier.Isolation.thread, .process, .thread, .process] {
            let verifier = SPFVerifier(settings: SPFIsolationTests.settings(dns, isolation), logger: testLogger, workerExecutable: backstopBinary)
            defer { verifier.shutdown() }
            // Warm up: spawn the worker and fill its DNS cache.
            for _ in 0..<20 { _ = await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org") }
            let started = NIODeadline.now()
            for _ in 0..<count {
                let outcome = await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h.example.org")
                precondition(outcome.result == .pass)
            }
            let total = NIODeadline.now() - started
            print(String(format: "spf isolation=%@: %d cached-pass evaluations in %.3f s: %.1f us each",
                         isolation.rawValue, count, Double(total.nanoseconds) / 1e9, Double(total.nanoseconds) / Double(count) / 1e3))
        }
    }
}
