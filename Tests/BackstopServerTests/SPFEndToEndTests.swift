// SPF through the server: in process over a real socket (a fail refused, a pass with its
// header once per message), and as `backstop serve` processes: workers started through the
// supervisor run as spf.worker_user while the server runs as server.user (also when a
// reload adds [spf]), and a server whose
// supervisor is killed stops with status 71 to be restarted; twenty reloads
// that change [spf] leave no worker, thread or descriptor behind; 3,000 hostile 60 KB
// records grow the server by less than its caches' bounds (32 MiB) allow.

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing
@testable import BackstopCore
@testable import BackstopServer
@testable import BackstopSPF

/// The processes whose parent is `pid`.
func children(of pid: Int32) -> [Int32] {
    let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return all.compactMap(Int32.init).filter { child in
        guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == pid
    }
}

func count(_ directory: String) -> Int { (try? FileManager.default.contentsOfDirectory(atPath: directory).count) ?? -1 }

func spfRequest(client: String, sender: String, instance: String, recipient: String = "b@local.test") -> [(String, String)] {
    [("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", client),
     ("helo_name", "mail.example.org"), ("sender", sender), ("recipient", recipient), ("instance", instance)]
}

/// `backstop serve` as root with SPF for example.org, dropping to daemon with workers as
/// nobody (its directory and file readable by daemon), started and asked once for a pass,
/// so that a worker runs. `extra` is more TOML.
func startSPFServerAsDaemon(dns: SPFTestDNS, extra: String = "") async throws -> (serve: ServeProcess, client: PolicyClient, path: String, port: Int) {
    let dir = tempDirectory()
    chmod(dir, 0o755)
    let port = freePort()
    let path = dir + "/backstop.toml"
    try """
    [[listen]]
    address = "127.0.0.1:\(port)"
    [server]
    user = "daemon"
    [policy]
    rcpt = ["spf"]
    [spf]
    resolvers = ["127.0.0.1:\(dns.port)"]
    worker_user = "nobody"

    """.appending(extra).write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o644)
    let serve = try ServeProcess(config: path)
    #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
    let client = try await waitForClient(port: port)
    #expect(try client.ask(spfRequest(client: "192.0.2.5", sender: "a@example.org", instance: "1"))?.hasPrefix("action=PREPEND Received-SPF: pass") == true)
    return (serve, client, path, port)
}

@Suite(.serialized) struct SPFEndToEndTests {
    @Test func failRefusedPassWithHeaderOncePerMessage() async throws {
        let dns = try await SPFTestDNS.start(zone: [
            "example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]],
        ])
        defer { dns.stop() }
        let toml = """
        [[listen]]
        address = "127.0.0.1:0"
        [policy]
        rcpt = ["spf"]
        deadline = "9s"
        [spf]
        resolvers = ["127.0.0.1:\(dns.port)"]
        receiver = "mx.test"
        dns_timeout = "1s"
        evaluation_deadline = "8s"
        """
        SPFSettings.register()
        SPFProcesses.executable = backstopBinary
        let config = try Configuration.parse(toml, file: "test.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: testLogger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        // Deadlines that leave a busy machine seconds to start the first worker process.
        let client = try PolicyClient(endpoint: ListenerSettings.parseEndpoint(server.boundAddresses[0])!, timeoutSeconds: 10)
        let refused = try client.ask(spfRequest(client: "198.51.100.1", sender: "alice@example.org", instance: "m1"))
        #expect(refused?.hasPrefix("action=550 5.7.23 SPF fail: example.org does not allow 198.51.100.1") == true, "\(refused ?? "no answer")")
        let pass = try client.ask(spfRequest(client: "192.0.2.25", sender: "alice@example.org", instance: "m2"))
        #expect(pass == "action=PREPEND Received-SPF: pass (mx.test: domain of alice@example.org designates 192.0.2.25 as permitted sender) client-ip=192.0.2.25; envelope-from=\"alice@example.org\"; helo=mail.example.org; receiver=mx.test; identity=mailfrom; mechanism=\"ip4:192.0.2.0/24\";")
        let second = try client.ask(spfRequest(client: "192.0.2.25", sender: "alice@example.org", instance: "m2", recipient: "c@local.test"))
        #expect(second == "action=DUNNO")
        // As `backstop serve` does: the checks release their workers before the loops go.
        (engine.checks["spf"] as? SPFCheck)?.stop()
        await server.stop()
    }

    @Test(.enabled(if: geteuid() == 0, "only root can start a server that drops to another user"))
    func workersRunAsWorkerUserUnderAServerThatDroppedRoot() async throws {
        let dns = try await SPFTestDNS.start(zone: ["example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let metricsPort = freePort()
        let (serve, client, _, _) = try await startSPFServerAsDaemon(dns: dns, extra: "[metrics]\nlisten = \"127.0.0.1:\(metricsPort)\"\n")
        defer { _ = serve.stop() }
        let server = serve.process.processIdentifier
        let daemon = try #require(getpwnam("daemon")).pointee.pw_uid
        #expect(processStatus(server, "Uid")?.split(separator: "\t").allSatisfy { UInt32($0) == daemon } == true)
        // The server's one child is the supervisor (still root); the worker is its child.
        let supervisors = children(of: server)
        #expect(supervisors.count == 1, "\(supervisors)")
        let supervisor = try #require(supervisors.first)
        #expect(processStatus(supervisor, "Uid")?.hasPrefix("0\t") == true)
        // Root for its one job: CAP_KILL, CAP_SETGID and CAP_SETUID, nothing else.
        #expect(processStatus(supervisor, "CapEff") == "00000000000000e0" && processStatus(supervisor, "CapPrm") == "00000000000000e0",
                "\(processStatus(supervisor, "CapEff") ?? "?")")
        let workers = children(of: supervisor)
        #expect(workers.count == 1)
        let worker = try #require(workers.first)
        #expect(processStatus(worker, "Uid")?.split(separator: "\t").allSatisfy { $0 == "65534" } == true)
        #expect(processStatus(worker, "Seccomp") == "2")
        // The server cannot signal its worker (another uid); the supervisor ends it for it.
        #expect(kill(worker, SIGKILL) == 0)  // the test runs as root
        for _ in 0..<100 where children(of: supervisor).first == worker { try? await Task.sleep(for: .milliseconds(20)) }
        #expect(try client.ask(spfRequest(client: "198.51.100.1", sender: "a@example.org", instance: "2"))?.hasPrefix("action=550") == true)
        let replacement = try #require(children(of: supervisor).first)
        #expect(replacement != worker)
        // The server's one DNS cache is counted although evaluations run in worker processes.
        let metrics = try scrape(port: metricsPort)
        #expect(metrics.contains("backstop_spf_dns_cache_total{result=\"miss\"} "), "\(metrics)")
        #expect(!metrics.contains("backstop_spf_dns_cache_total{result=\"miss\"} 0\n"), "\(metrics)")
        // Stopping the server ends the supervisor and its workers.
        #expect(serve.stop() == 0)
        // Ended: gone, or a zombie that nobody has reaped yet (they are init's children now,
        // and a container's first process may not reap them at once).
        func ended(_ pid: pid_t) -> Bool { processStatus(pid, "State").map { $0.hasPrefix("Z") } ?? true }
        for _ in 0..<250 where !ended(supervisor) || !ended(replacement) { try? await Task.sleep(for: .milliseconds(20)) }
        #expect(ended(supervisor) && ended(replacement), "the supervisor and its worker end with the server")
    }

    @Test(.enabled(if: geteuid() == 0, "only root can start a server that drops to another user"))
    func spfAddedByAReloadRunsWorkersAsWorkerUser() async throws {
        let dns = try await SPFTestDNS.start(zone: ["example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let dir = tempDirectory()
        chmod(dir, 0o755)
        let port = freePort()
        let path = dir + "/backstop.toml"
        let withoutSPF = "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[server]\nuser = \"daemon\"\n"
        try withoutSPF.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o644)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        try (withoutSPF + "[policy]\nrcpt = [\"spf\"]\n[spf]\nresolvers = [\"127.0.0.1:\(dns.port)\"]\nworker_user = \"nobody\"\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("configuration reloaded"), "\(serve.log)")
        let client = try await waitForClient(port: port)
        #expect(try client.ask(spfRequest(client: "192.0.2.5", sender: "a@example.org", instance: "1"))?.hasPrefix("action=PREPEND Received-SPF: pass") == true)
        // The supervisor was started at the start, while root, although [spf] came later.
        let supervisor = try #require(children(of: serve.process.processIdentifier).first)
        let worker = try #require(children(of: supervisor).first)
        #expect(processStatus(worker, "Uid")?.split(separator: "\t").allSatisfy { $0 == "65534" } == true)
        #expect(!serve.log.contains("spf workers run as uid"), "\(serve.log)")
    }

    @Test(.enabled(if: geteuid() == 0, "only root can start a server that drops to another user"))
    func aServerWhoseSupervisorEndsStopsToBeRestarted() async throws {
        let dns = try await SPFTestDNS.start(zone: ["example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let (serve, _, path, port) = try await startSPFServerAsDaemon(dns: dns)
        defer { _ = serve.stop() }
        let supervisor = try #require(children(of: serve.process.processIdentifier).first)
        let worker = try #require(children(of: supervisor).first)
        #expect(kill(supervisor, SIGKILL) == 0)
        // No SPF worker could be replaced any more: the server says why and stops, with the
        // status systemd restarts on, instead of answering temperror from then on.
        for _ in 0..<200 where serve.process.isRunning { try? await Task.sleep(for: .milliseconds(50)) }
        #expect(!serve.process.isRunning)
        #expect(serve.stop() == 71)
        #expect(serve.log.contains("the SPF supervisor (pid \(supervisor)) was killed by signal 9; no SPF worker can be started without it"), "\(serve.log)")
        #expect(serve.log.contains("backstop stopped"))
        // (A dead worker may wait as a zombie for whoever adopted it to reap it.)
        func ended() -> Bool { processStatus(worker, "State").map { $0.hasPrefix("Z") } ?? true }
        for _ in 0..<100 where !ended() { try? await Task.sleep(for: .milliseconds(20)) }
        #expect(ended(), "the worker ends with its supervisor")
        // SIGTERM to the whole service (systemd's default KillMode, or a Ctrl-C) is a stop,
        // not a supervisor's failure: the supervisor ignores it and ends with the server.
        let again = try ServeProcess(config: path, logName: "again.log")
        defer { _ = again.stop() }
        #expect(await again.waitForLog("backstop started"), "\(again.log)")
        #expect(try await waitForClient(port: port).ask(spfRequest(client: "192.0.2.5", sender: "a@example.org", instance: "2"))?.hasPrefix("action=PREPEND") == true)
        let second = try #require(children(of: again.process.processIdentifier).first)
        #expect(kill(second, SIGTERM) == 0 && kill(again.process.processIdentifier, SIGTERM) == 0)
        again.process.waitUntilExit()
        #expect(again.process.terminationStatus == 0, "\(again.log)")
        #expect(!again.log.contains("the SPF supervisor"), "\(again.log)")
    }

    /// A package upgrade replaces the binary under a running server: the workers it starts
    /// afterwards must still be its own version (which speaks its protocol), not whatever
    /// is at its path now.
    @Test func workersStartedAfterTheBinaryIsReplacedAreTheServersOwn() async throws {
        let dns = try await SPFTestDNS.start(zone: ["example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let dir = tempDirectory()
        let binary = dir + "/backstop", port = freePort(), path = dir + "/backstop.toml"
        try FileManager.default.copyItem(atPath: backstopBinary, toPath: binary)
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\nrcpt = [\"spf\"]\n[spf]\nresolvers = [\"127.0.0.1:\(dns.port)\"]\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path, binary: binary)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        let client = try await waitForClient(port: port)
        #expect(try client.ask(spfRequest(client: "192.0.2.5", sender: "a@example.org", instance: "1"))?.hasPrefix("action=PREPEND Received-SPF: pass") == true)
        let server = serve.process.processIdentifier
        let worker = try #require(children(of: server).first)
        // Named as the server was started, for ps and the journal (not /proc/self/exe).
        let cmdline = try String(contentsOfFile: "/proc/\(worker)/cmdline", encoding: .utf8).split(separator: "\0").prefix(2)
        #expect(cmdline.elementsEqual([binary, "spf-worker"][...]) { $0 == $1 }, "\(cmdline)")
        // As dpkg does: the new file is renamed over the old one. This one cannot be a worker.
        try "#!/bin/sh\nexit 3\n".write(toFile: binary + ".new", atomically: false, encoding: .utf8)
        chmod(binary + ".new", 0o755)
        #expect(rename(binary + ".new", binary) == 0)
        #expect(kill(worker, SIGKILL) == 0)
        for _ in 0..<100 where children(of: server).first == worker { try? await Task.sleep(for: .milliseconds(20)) }
        let answer = try client.ask(spfRequest(client: "192.0.2.6", sender: "a@example.org", instance: "2"))
        #expect(answer?.hasPrefix("action=PREPEND Received-SPF: pass") == true, "\(answer ?? "no answer")\n\(serve.log)")
        #expect(!serve.log.contains("exited with status 3"), "\(serve.log)")
    }

    @Test func reloadsReleaseWorkersThreadsAndDescriptors() async throws {
        let dns = try await SPFTestDNS.start(zone: ["example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        func write(_ n: Int) throws {
            try """
            [[listen]]
            address = "127.0.0.1:\(port)"
            [policy]
            rcpt = ["spf"]
            [spf]
            resolvers = ["127.0.0.1:\(dns.port)"]
            workers = 2
            dns_timeout = "\(1000 + n)ms"
            """.write(toFile: path, atomically: true, encoding: .utf8)
        }
        try write(0)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        let pid = serve.process.processIdentifier
        let client = try await waitForClient(port: port)
        func traffic(_ round: Int) throws {
            for n in 0..<4 {
                let answer = try client.ask(spfRequest(client: "192.0.2.\(n + 1)", sender: "a@example.org", instance: "\(round).\(n)"))
                #expect(answer?.hasPrefix("action=PREPEND Received-SPF: pass") == true, "\(answer ?? "none")")
            }
        }
        try traffic(0)
        var samples: [(workers: Int, threads: Int, fds: Int)] = []
        for round in 1...20 {
            try write(round)
            serve.signal(SIGHUP)
            #expect(await serve.waitForLog("configuration reloaded", count: round), "reload \(round): \(serve.log.suffix(500))")
            try traffic(round)
            try? await Task.sleep(for: .milliseconds(100))  // retired workers are reaped as their sockets close
            samples.append((children(of: pid).count, count("/proc/\(pid)/task"), count("/proc/\(pid)/fd")))
        }
        // Replaced verifiers stop their workers once evaluations in flight have had their
        // time (evaluation_deadline, 4 s, and a second).
        for _ in 0..<100 where children(of: pid).count > 2 { try? await Task.sleep(for: .milliseconds(100)) }
        let first = samples[2], last = (children(of: pid).count, count("/proc/\(pid)/task"), count("/proc/\(pid)/fd"))
        #expect(last.0 <= 2, "worker processes after 20 reloads: \(samples.map(\.workers)) then \(last.0)")
        #expect(last.1 <= first.threads + 2, "threads: \(samples.map(\.threads)) then \(last.1)")
        #expect(last.2 <= first.fds + 4, "descriptors: \(samples.map(\.fds)) then \(last.2)")
    }

    @Test func hostileRecordsDoNotGrowTheServer() async throws {
        // 60 KB records under *.big.test (valid: 3,500 ip4 terms) and *.junk.test (malformed).
        let valid = "v=spf1 " + (0..<3_500).map { "ip4:10.\($0 / 256).\($0 % 256).1/32" }.joined(separator: " ") + " -all"
        let junk = "v=spf1 " + String(repeating: "junk ", count: 12_000)
        #expect(valid.utf8.count > 59_000 && junk.utf8.count > 59_000)
        let dns = try await SPFTestDNS.start(zone: ["*.big.test": [["TXT": [valid]]], "*.junk.test": [["TXT": [junk]]],
                                                    "example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try """
        [[listen]]
        address = "127.0.0.1:\(port)"
        [policy]
        rcpt = ["spf"]
        [spf]
        resolvers = ["127.0.0.1:\(dns.port)"]
        dns_timeout = "3s"
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        let pid = serve.process.processIdentifier
        let warm = try await waitForClient(port: port)
        for n in 0..<100 { _ = try warm.ask(spfRequest(client: "192.0.2.\(n % 200 + 1)", sender: "a@example.org", instance: "w\(n)")) }
        let before = rssKiB(pid)
        let failures = NIOLockedValueBox(0)
        DispatchQueue.concurrentPerform(iterations: 4) { part in
            guard let client = try? PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port), timeoutSeconds: 30) else {
                failures.withLockedValue { $0 += 1 }
                return
            }
            // One in ten valid (each fills the DNS cache with 400 KB), the rest malformed.
            for n in stride(from: part, to: 3_000, by: 4) {
                let domain = n % 10 == 0 ? "d\(n).big.test" : "d\(n).junk.test"
                let answer = try? client.ask(spfRequest(client: "10.0.0.1", sender: "u\(n)@" + domain, instance: "h\(n)"))
                let expected = n % 10 == 0 ? "action=PREPEND Received-SPF: pass" : "action=PREPEND Received-SPF: permerror"
                if answer?.hasPrefix(expected) != true { failures.withLockedValue { $0 += 1 } }
            }
        }
        let after = rssKiB(pid)
        #expect(failures.withLockedValue { $0 } == 0)
        // Under 20 MB, as issue 11 asks. The caches these records can fill are bounded at 32 MiB
        // together (DNS 8, outcomes 8, messages 16; docs/security.md), but this run fills the
        // DNS cache and only a few MiB of the others; before the bounds the same run grew by
        // 170 MiB. Runs on 2026-11-29 measured 14.1–14.9 MiB (14.8–15.6 MB).
        #expect(after - before < 20_000_000 / 1024, "RSS grew from \(before) KiB to \(after) KiB")
        print("hostile records: server RSS \(before) KiB -> \(after) KiB after 3,000 distinct 60 KB records")
    }
}

/// Tests/Support/dns_server.py serving one zone; stopped by closing its stdin.
final class SPFTestDNS: @unchecked Sendable {
    let process = Process()
    let input = Pipe()
    let port: Int

    private init(zone: [String: Any]) throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-zone-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: zone).write(to: file)
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", root.appendingPathComponent("Tests/Support/dns_server.py").path, "--zone", file.path]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        var text = ""
        while !text.contains("\n") {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
        }
        guard let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            process.terminate()
            throw ServerError("dns_server.py did not start (pip install dnslib)")
        }
        self.port = port
    }

    static func start(zone: [String: Any]) async throws -> SPFTestDNS {
        nonisolated(unsafe) let zone = zone
        return try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try SPFTestDNS(zone: zone) }) }.start()
        }
    }

    func stop() { try? input.fileHandleForWriting.close() }
}

extension SPFEndToEndTests {
    /// `backstop spf` answers as the server would: a client in trusted_networks or a sender
    /// domain in skip_sender_domains gets DUNNO (exit 0) whatever the result, as the server
    /// skips SPF for it; a mistyped --ip is a usage error, not a result of `none`.
    @Test func theSPFCommandAppliesTheServersSkipRules() async throws {
        let dns = try await SPFTestDNS.start(zone: ["example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]]])
        defer { dns.stop() }
        let path = tempDirectory() + "/backstop.toml"
        try """
            [spf]
            resolvers = ["127.0.0.1:\(dns.port)"]
            trusted_networks = ["198.51.100.0/24"]
            skip_sender_domains = ["example.org"]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        func spf(_ ip: String, _ sender: String) throws -> Run {
            try runBackstop(["spf", "--config", path, "--ip", ip, "--sender", sender, "--helo", "mail.example.net"])
        }
        let trusted = try spf("198.51.100.7", "a@sub.example.net")
        #expect(trusted.status == 0, "\(trusted.stdout)")
        #expect(trusted.stdout.contains("answer: DUNNO\nnote: the server skips SPF for this request (spf=skipped(trusted_network))"), "\(trusted.stdout)")
        let skippedDomain = try spf("203.0.113.9", "a@example.org")
        #expect(skippedDomain.stdout.hasPrefix("fail\n"), "\(skippedDomain.stdout)")
        #expect(skippedDomain.status == 0)
        #expect(skippedDomain.stdout.contains("(spf=skipped(sender_domain))"))
        let mistyped = try spf("203.0.113.999", "a@example.org")
        #expect(mistyped.status == 64, "\(mistyped.stdout)")
        #expect(mistyped.stderr.contains("--ip must be an IPv4 or IPv6 address"), "\(mistyped.stderr)")
    }
}
