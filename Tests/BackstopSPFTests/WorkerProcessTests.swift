// Worker processes as the server sees them: a worker killed or stopped costs the
// evaluations it held (temperror, in time) and is replaced; a backlog of large frames is
// handed over as the worker reads it, within the server's budget, and a worker that stops
// reading is ended; a worker that breaks the protocol (Tests/Support/fake_spf_worker.py
// stands in for `backstop spf-worker`) is killed and replaced while the server stays up; a
// real worker runs as spf.worker_user with no capabilities, no environment, no descriptor
// but its socket, resource limits and a seccomp filter, also when started through the
// supervisor; a replaced verifier leaves no process behind.

import BackstopCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import BackstopSPF

/// The state letter of a process ("S", "T", "Z"), nil once it is gone.
func processState(_ pid: Int32) -> Character? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return nil }
    return stat[stat.index(close, offsetBy: 2)]
}

func waitUntilGone(_ pid: Int32) async {
    for _ in 0..<300 where processState(pid) != nil { try? await Task.sleep(for: .milliseconds(10)) }
}

/// A field of /proc/PID/status, split into words.
func status(_ pid: Int32, _ key: String) -> [String] {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return ["gone"] }
    return text.split(separator: "\n").first { $0.hasPrefix(key + ":") }.map {
        $0.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    } ?? ["missing"]
}

/// The restarts for `reason` once there are `count` (a worker is reaped off the event loop,
/// after its evaluations were answered, so the count can come a moment later); 5 s at most.
func restarts(_ verifier: SPFVerifier, _ reason: SPFRestartReason, reaching count: Int) async -> Int {
    for _ in 0..<500 where (verifier.workerRestarts[reason] ?? 0) < count { try? await Task.sleep(for: .milliseconds(20)) }
    return verifier.workerRestarts[reason] ?? 0
}

/// How long `loop` takes to run a task handed to it now.
func delay(of loop: any EventLoop) async throws -> TimeAmount {
    let asked = NIODeadline.now()
    return try await loop.submit { NIODeadline.now() }.get() - asked
}

/// Starts and ends workers as DirectSpawner does, each after `pause`; says what it began.
struct SlowSpawner: SPFSpawner {
    static let pause: UInt32 = 1_000_000  // microseconds
    let begun = NIOLockedValueBox<[String]>([])
    /// Every worker it started.
    let started = NIOLockedValueBox<[pid_t]>([])

    func spawn(executable: String, user: String) throws(SPFSpawnError) -> (fd: Int32, pid: pid_t) {
        begun.withLockedValue { $0.append("spawn") }
        usleep(Self.pause)
        let spawned = try DirectSpawner().spawn(executable: executable, user: user)
        started.withLockedValue { $0.append(spawned.pid) }
        return spawned
    }

    func killAndReap(_ pid: pid_t) -> Int32? {
        begun.withLockedValue { $0.append("kill") }
        usleep(Self.pause)
        return DirectSpawner().killAndReap(pid)
    }

    func waitUntilBegun(_ what: String, count: Int = 1) async throws {
        for _ in 0..<500 where begun.withLockedValue({ $0.filter { $0 == what }.count }) < count {
            try await Task.sleep(for: .milliseconds(10))
        }
        try #require(begun.withLockedValue { $0.filter { $0 == what }.count } >= count, "no \(what) began: \(begun.withLockedValue { $0 })")
    }
}

/// A log handler that keeps what it is given, and when (taken on the thread that logs).
struct RecordedLog: LogHandler {
    let messages = NIOLockedValueBox<[(level: Logger.Level, text: String, at: NIODeadline)]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let at = NIODeadline.now()
        messages.withLockedValue { $0.append((event.level, event.message.description, at)) }
    }
}

nonisolated(unsafe) let workerZone: [String: Any] = [
    "example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]],
    "slow.example": [["TXT": "v=spf1 a:never.slow.example -all"]],
    "never.slow.example": ["TIMEOUT"],
    // 64 KB of the term that takes the most octets to hand to a worker (~3 per octet).
    "wide.example": [["TXT": ["v=spf1" + String(repeating: " ip6:::", count: 9_200) + " -all"]]],
    // The same behind an include: too large to send ahead, so every worker asks for it.
    "viawide.example": [["TXT": "v=spf1 include:wide.example -all"]],
]

@Suite(.serialized) struct WorkerProcessTests {
    @Test func killedWorkerCostsItsEvaluationsAndIsReplaced() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        // Long DNS timeout and deadline: the evaluation that waits on DNS stays with its worker
        // until the kill, however slowly a loaded test machine gets there.
        let verifier = try makeVerifier(verifierSettings(dns, dnsTimeout: .seconds(30), deadline: .seconds(40), cacheTTL: .zero))
        #expect(await verifier.workerProcessIDs.isEmpty, "spawned before the first evaluation")
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h").result == .pass)
        let first = try #require(await verifier.workerProcessIDs.first)
        // Between evaluations: the next one does not notice.
        #expect(kill(first, SIGKILL) == 0)
        await waitUntilGone(first)
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h").result == .pass)
        let second = try #require(await verifier.workerProcessIDs.first)
        #expect(second != first && processState(first) == nil)
        #expect(verifier.workerRestarts[.crashed] == 1)
        // During an evaluation that waits on DNS: temperror at once, not at the deadline
        // (timed where the answer is produced, on the event loop).
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let query = SPFQuery(clientAddress: "192.0.2.1", sender: "x@slow.example", helo: "h")
        let lost = verifier.evaluate(query, deadline: .now() + .seconds(40), on: loop).map { ($0, NIODeadline.now()) }
        // Killed once the worker holds the evaluation (a job still queued when its worker
        // dies goes to the next worker instead).
        var waited = 0
        while await verifier.evaluationsInFlight == 0, waited < 2_000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        #expect(await verifier.evaluationsInFlight == 1, "the worker holds the evaluation")
        let killed = NIODeadline.now()
        #expect(kill(second, SIGKILL) == 0)
        let (outcome, answered) = try await lost.get()
        #expect(outcome.result == .temperror && outcome.problem?.contains("worker ended") == true, "\(outcome)")
        #expect(answered - killed < .seconds(2), "answered \(answered - killed) after the kill")
        #expect(await restarts(verifier, .crashed, reaching: 2) == 2)
        #expect(await verifier.evaluate(ip: "198.51.100.1", sender: "a@example.org", helo: "h").result == .fail)
        let third = try #require(await verifier.workerProcessIDs.first)
        // A verifier that is shut down (a reload replaced it) ends and reaps its worker.
        verifier.shutdown()
        await waitUntilGone(third)
        #expect(processState(third) == nil, "worker \(third) outlived its verifier")
    }

    /// A request of an engine that a reload replaced can reach SPF after the old verifier
    /// was shut down (a slow check before spf): it gets temperror and starts no worker that
    /// nothing would stop, also on a loop that had no worker yet.
    /// BACKSTOP_SPF_WORKER_BINARY names a binary the supervisor may run as root: only a
    /// regular executable file that only its owner (root or this user) can write.
    @Test func workerBinaryVariableTakesOnlyASafeFile() throws {
        let dir = NSTemporaryDirectory() + "worker-binary-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let binary = dir + "/backstop"
        try "#!/bin/sh\n".write(toFile: binary, atomically: true, encoding: .utf8)
        chmod(binary, 0o755)
        #expect(SPFProcesses.unusableWorkerBinary(binary) == nil)
        chmod(binary, 0o757)
        #expect(SPFProcesses.unusableWorkerBinary(binary) == "is writable by its group or others")
        chmod(binary, 0o775)
        #expect(SPFProcesses.unusableWorkerBinary(binary) == "is writable by its group or others")
        chmod(binary, 0o644)
        #expect(SPFProcesses.unusableWorkerBinary(binary) == "is not executable")
        #expect(SPFProcesses.unusableWorkerBinary("backstop") == "is not an absolute path")
        #expect(SPFProcesses.unusableWorkerBinary(dir) == "is not a regular file")
        #expect(SPFProcesses.unusableWorkerBinary(dir + "/missing")?.hasPrefix("cannot be read") == true)
    }

    @Test func aVerifierShutDownStartsNoWorker() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns, workers: 2))
        let loops = Array(MultiThreadedEventLoopGroup.singleton.makeIterator())
        try #require(loops.count >= 2, "needs two event loops")
        let query = { (client: String) in SPFQuery(clientAddress: client, sender: "a@example.org", helo: "h") }
        let first = try await verifier.evaluate(query("192.0.2.5"), deadline: .now() + .seconds(10), on: loops[0]).get()
        #expect(first.result == .pass, "\(first)")
        let pid = try #require(await verifier.workerProcessIDs.first)
        verifier.shutdown()
        await waitUntilGone(pid)
        // Each with a new client, so the outcome cache cannot answer.
        for (i, loop) in loops.enumerated() {
            let late = try await verifier.evaluate(query("192.0.2.\(77 + i)"), deadline: .now() + .seconds(10), on: loop).get()
            #expect(late.result == .temperror && late.problem == "SPF is stopping", "loop \(i): \(late)")
        }
        #expect(await verifier.workerProcessIDs.isEmpty, "a worker started after shutdown")
    }

    @Test func stoppedWorkerIsKilledAndReplaced() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns, deadline: .seconds(1), cacheTTL: .zero))
        defer { verifier.shutdown() }
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h").result == .pass)
        let stopped = try #require(await verifier.workerProcessIDs.first)
        #expect(kill(stopped, SIGSTOP) == 0)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let started = NIODeadline.now()
        let (outcome, answered) = try await verifier.evaluate(SPFQuery(clientAddress: "192.0.2.5", sender: "a@example.org", helo: "h"),
                                                              deadline: started + .seconds(5), on: loop).map { ($0, NIODeadline.now()) }.get()
        let took = answered - started
        #expect(outcome.result == .temperror)
        #expect(took >= .milliseconds(900) && took < .milliseconds(2_000), "answered after \(took)")
        await waitUntilGone(stopped)
        #expect(processState(stopped) == nil, "the stopped worker was not killed and reaped")
        #expect(await restarts(verifier, .timeout, reaching: 1) == 1)
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h").result == .pass)
    }

    /// A worker is handed evaluations as it reads them, not all it could hold at once: 48
    /// evaluations of a domain whose 64 KB record takes ~276 KB a frame to hand over (13 MB
    /// written at once), queued while the worker starts, all end in the record's result,
    /// the worker is not taken for one that stopped reading, and the server never holds
    /// more than its budget and a frame for it. (Before the budget, 256 such evaluations,
    /// 70 MB, ended a healthy worker for letting 64 MiB wait.) Sent ahead in each
    /// evaluation's first frame (wide.example), or asked for by the worker (viawide.example).
    /// 48, not 256: a debug worker takes ~35 ms for each, and the CPU the test takes from
    /// the suites running beside it must stay short.
    @Test(arguments: ["wide.example", "viawide.example"])
    func aBacklogOfLargeFramesWaitsUntilTheWorkerReads(domain: String) async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let verifier = try makeVerifier(verifierSettings(dns, deadline: .seconds(60), queue: 1_000))
        defer { verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let query: @Sendable (Int) -> SPFQuery = { n in SPFQuery(clientAddress: "10.1.\(n / 250).\(n % 250 + 1)", sender: "a@" + domain, helo: "h") }
        // The record into the DNS cache, so that each evaluation's first frame carries it.
        let first = try await verifier.evaluate(query(0), deadline: .now() + .seconds(60), on: loop).get()
        #expect(first.result == .fail, "\(first)")
        // The worker ends; the backlog builds up while the next one starts.
        let pid = try #require(await verifier.workerProcessIDs.first)
        #expect(kill(pid, SIGKILL) == 0)
        #expect(await restarts(verifier, .crashed, reaching: 1) == 1)
        let backlog = try await loop.submit {
            (1...48).map { verifier.evaluate(query($0), deadline: .now() + .seconds(60), on: loop) }
        }.get()
        var results: [SPFResult: Int] = [:]
        for future in backlog { results[try await future.get().result, default: 0] += 1 }
        #expect(results == [.fail: 48], "\(results)")
        #expect(verifier.workerRestarts == [.crashed: 1], "\(verifier.workerRestarts)")
        let held = await verifier.mostHeldForAWorker
        #expect(held >= SPFWorkerConnection.writeBudget && held <= SPFWorkerConnection.writeBudget + SPFWire.maxToWorker,
                "held \(held) octets for the worker at once")
    }

    /// A worker that stops reading is ended once the server has held more than it may for it
    /// (SPFWorkerConnection.writeBudget) for half the evaluation deadline, not only when an
    /// evaluation it owes an answer for expires (an answer parked for it owes nothing, so a
    /// worker could stop reading with only those left and never be ended).
    @Test func aWorkerThatStopsReadingIsEndedOnceItsBudgetIsFull() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let verifier = SPFVerifier(settings: verifierSettings(dns, deadline: .seconds(8), cacheTTL: .zero), logger: testLogger,
                                   executable: try WorkerProcessTests.fakeWorker("deaf"), spawner: DirectSpawner())
        defer { verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        // 40 first frames of ~276 KB: over 8 MiB, none of it read. Each answer is timed on
        // the event loop that gives it, not by when this test's task is resumed. A deadline
        // of 8 s: the worker is ended 4 s (half of it) after the budget filled, which leaves
        // a busy machine up to 4 s to fetch the record and fill the budget.
        let backlog = try await loop.submit {
            let started = NIODeadline.now()
            return (1...40).map { n in
                verifier.evaluate(SPFQuery(clientAddress: "10.2.0.\(n)", sender: "a@wide.example", helo: "h"),
                                  deadline: started + .seconds(8), on: loop).map { ($0, NIODeadline.now() - started) }
            }
        }.get()
        #expect(await restarts(verifier, .timeout, reaching: 1) >= 1, "\(verifier.workerRestarts)")
        var answers: [(SPFOutcome, TimeAmount)] = []
        for future in backlog { answers.append(try await future.get()) }
        #expect(answers.allSatisfy { $0.0.result == .temperror })
        // The first answers come when the worker is ended: half the deadline after the budget
        // filled (4 s and the record's fetch), not at the deadline (8 s after the evaluations).
        let first = try #require(answers.min { $0.1 < $1.1 })
        #expect(first.0.problem == "SPF worker ended during the evaluation" && first.1 < .milliseconds(7_500),
                "the first answer came after \(first.1): \(first.0.problem ?? "")")
    }

    /// A verifier whose workers start and end slowly, with its first evaluation submitted
    /// (on `loop`) and its worker's start under way.
    func startingSlowly(_ dns: LoopbackDNSServer) async throws
        -> (SPFVerifier, SlowSpawner, any EventLoop, EventLoopFuture<SPFOutcome>) {
        let spawner = SlowSpawner()
        let verifier = SPFVerifier(settings: verifierSettings(dns, deadline: .seconds(20), cacheTTL: .zero), logger: testLogger,
                                   executable: backstopBinary, spawner: spawner)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let first = verifier.evaluate(SPFQuery(clientAddress: "192.0.2.5", sender: "a@example.org", helo: "h"),
                                      deadline: .now() + .seconds(20), on: loop)
        try await spawner.waitUntilBegun("spawn")
        return (verifier, spawner, loop, first)
    }

    /// Starting a worker waits for its exec (and, through the supervisor, for the
    /// supervisor's answer), ending one for its reaping: neither happens on the event loop,
    /// which meanwhile answers Postfix's other requests.
    @Test func startingAndEndingAWorkerNeverHoldsUpItsEventLoop() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let (verifier, spawner, loop, first) = try await startingSlowly(dns)
        defer { verifier.shutdown() }
        let query = { (client: String) in SPFQuery(clientAddress: client, sender: "a@example.org", helo: "h") }
        let whileStarting = try await delay(of: loop)
        #expect(whileStarting < .milliseconds(500), "the event loop waited \(whileStarting) for a worker to start")
        #expect(try await first.get().result == .pass)
        let pid = try #require(await verifier.workerProcessIDs.first)
        #expect(kill(pid, SIGKILL) == 0)
        try await spawner.waitUntilBegun("kill")
        let whileEnding = try await delay(of: loop)
        #expect(whileEnding < .milliseconds(500), "the event loop waited \(whileEnding) for a worker to be reaped")
        // Evaluations that come while the worker is reaped wait for the next one.
        let second = try await verifier.evaluate(query("198.51.100.1"), deadline: .now() + .seconds(20), on: loop).get()
        #expect(second.result == .fail, "\(second)")
        #expect(await restarts(verifier, .crashed, reaching: 1) == 1)
        #expect(spawner.begun.withLockedValue { $0 } == ["spawn", "kill", "spawn"])
    }

    /// A server that stops while a worker starts waits for the start (and the worker's end)
    /// before its event loops end: a result coming back to an ended loop is a crash under
    /// SWIFTNIO_STRICT, and the worker would be left behind.
    @Test func stoppingWaitsForAWorkerStartUnderWay() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let (verifier, spawner, _, evaluation) = try await startingSlowly(dns)
        verifier.shutdown()
        await verifier.settled(within: .seconds(15))
        let pids = spawner.started.withLockedValue { $0 }
        #expect(pids.count == 1, "the start under way finished before settled() returned: \(pids)")
        for pid in pids { #expect(processState(pid) == nil, "worker \(pid) outlived the stop") }
        #expect(spawner.begun.withLockedValue { $0 } == ["spawn", "kill"])
        let outcome = try await evaluation.get()
        // Queued while the worker started, or (on a machine so loaded that the start was done
        // before the stop) held by the worker the stop ended.
        #expect(outcome.result == .temperror && ["SPF is stopping", "SPF worker ended during the evaluation"].contains(outcome.problem ?? ""),
                "\(outcome)")
        #expect(verifier.workerRestarts.isEmpty, "a stop is no restart: \(verifier.workerRestarts)")
    }

    /// Stopping waits for the slots of all workers at once: `limit` in all, not per worker.
    /// Timed by the slots' own lines when they stop waiting (logged on their event loops),
    /// not by when this test's task is resumed, which a busy machine delays.
    @Test func stoppingWaitsForEveryWorkerAtOnce() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let spawner = SlowSpawner()
        let lines = RecordedLog()
        let verifier = SPFVerifier(settings: verifierSettings(dns, workers: 2, deadline: .seconds(20), cacheTTL: .zero),
                                   logger: Logger(label: "test") { _ in lines }, executable: backstopBinary, spawner: spawner)
        let loops = Array(MultiThreadedEventLoopGroup.singleton.makeIterator())
        try #require(loops.count >= 2, "needs two event loops")
        for (i, loop) in loops.prefix(2).enumerated() {
            _ = verifier.evaluate(SPFQuery(clientAddress: "192.0.2.\(i + 1)", sender: "a@example.org", helo: "h"),
                                  deadline: .now() + .seconds(20), on: loop)
        }
        try await spawner.waitUntilBegun("spawn", count: 2)
        verifier.shutdown()
        let started = NIODeadline.now()
        await verifier.settled(within: .milliseconds(400))
        let gaveUp = lines.messages.withLockedValue { $0 }.filter { $0.text.contains("stopping without waiting longer") }.map(\.at)
        #expect(gaveUp.count == 2, "each slot stops waiting once: \(gaveUp.count)")
        // One after the other, the second slot would give up 800 ms after the start.
        let last = gaveUp.max().map { $0 - started } ?? .zero
        #expect(last < .milliseconds(650), "the last slot gave up \(last) after the stop, with a limit of 400 ms")
        await verifier.settled(within: .seconds(15))  // let the starts end before the next test
    }

    /// A worker start that takes too long (a supervisor that does not answer) is logged as
    /// an error, and the evaluations waiting for it still get their answer.
    @Test func aWorkerStartThatTakesTooLongIsLogged() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let lines = RecordedLog()
        var settings = verifierSettings(dns, deadline: .seconds(20), cacheTTL: .zero)
        settings.slowProcessWork = .milliseconds(300)
        let spawner = SlowSpawner()
        let verifier = SPFVerifier(settings: settings, logger: Logger(label: "test.slow") { _ in lines },
                                   executable: backstopBinary, spawner: spawner)
        defer { verifier.shutdown() }
        #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h").result == .pass)
        let errors = lines.messages.withLockedValue { $0 }.filter { $0.level == .error }.map(\.text)
        #expect(errors == ["spf worker 0: a worker start has taken over 300ms (the SPF supervisor or the kernel does not answer); SPF evaluations wait meanwhile"],
                "\(errors)")
    }

    /// The interpreter behind `python3` (workers get an empty environment, so no PATH).
    static let python: String = {
        let process = Process()
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", "import sys; print(sys.executable)"]
        process.standardOutput = output
        try? process.run()
        process.waitUntilExit()
        return String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }()

    /// An executable that runs the fake worker in `mode`.
    static func fakeWorker(_ mode: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-fake-worker-\(mode)-\(getpid())").path
        let script = "#!/bin/sh\nexec \(python) \(packageRoot)/Tests/Support/fake_spf_worker.py \(mode) \"$@\"\n"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    @Test(arguments: [
        ("pass", nil), ("huge-counts", SPFRestartReason.protocol), ("bad-result", .protocol), ("oversized", .protocol),
        ("twice", .protocol), ("never", .timeout), ("garbage", .protocol), ("need-flood", .protocol),
        ("need-again", .protocol), ("unknown-id", .protocol), ("notice-flood", .protocol), ("exit", .exited),
    ] as [(String, SPFRestartReason?)])
    func aWorkerThatBreaksTheProtocolIsReplaced(mode: String, reason: SPFRestartReason?) async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        // A deadline of 2 s: room for a Python worker to start on a busy machine, and well
        // before the 5 s each evaluation is given below, which a worker that never answers
        // would reach if the deadline did not end it.
        let verifier = SPFVerifier(settings: verifierSettings(dns, deadline: .seconds(2), cacheTTL: .zero), logger: testLogger,
                                   executable: try WorkerProcessTests.fakeWorker(mode), spawner: DirectSpawner())
        defer { verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for round in 0..<3 {
            let started = NIODeadline.now()
            let query = SPFQuery(clientAddress: "192.0.2.\(round + 1)", sender: "a@example.org", helo: "h")
            let (outcome, answered) = try await verifier.evaluate(query, deadline: started + .seconds(5), on: loop)
                .map { ($0, NIODeadline.now()) }.get()
            let took = answered - started
            #expect(took < .milliseconds(3_500), "\(mode) round \(round): answered after \(took)")
            if reason == nil || mode == "twice" {
                // "twice" gets its first answer through; the repeat ends that worker. The next
                // round waits for that, or it could be sent to the worker about to end.
                #expect(outcome.result == .pass, "\(mode): \(outcome)")
                if mode == "twice" { _ = await restarts(verifier, .protocol, reaching: round + 1) }
            } else {
                #expect(outcome.result == .temperror, "\(mode) round \(round): \(outcome)")
            }
        }
        if let reason {
            // Let the last replacement happen (twice: the repeated answer ends the worker).
            #expect(await restarts(verifier, reason, reaching: 2) >= 2, "\(mode): \(verifier.workerRestarts)")
        } else {
            #expect(verifier.workerRestarts.isEmpty)
        }
    }

    /// The supervisor outlives the thread that started it: Linux sends a parent-death signal
    /// when the thread that spawned a process ends, and the server starts the supervisor
    /// from a Swift concurrency thread, which its pool may end while the server runs.
    @Test(.enabled(if: geteuid() == 0, "only root starts the supervisor"))
    func theSupervisorOutlivesTheThreadThatStartedIt() async throws {
        let started = NIOLockedValueBox<Result<SupervisorSpawner, any Error>?>(nil)
        // The thread lives on until the supervisor has asked for its signal (as it started).
        let thread = Thread {
            started.withLockedValue { $0 = Result { try SupervisorSpawner.start(executable: backstopBinary, user: "nobody") } }
            usleep(1_000_000)
        }
        thread.start()
        for _ in 0..<500 where !thread.isFinished { try await Task.sleep(for: .milliseconds(10)) }
        #expect(thread.isFinished)
        let supervisor = try #require(started.withLockedValue { $0 }).get()
        try await Task.sleep(for: .milliseconds(300))
        #expect(processState(supervisor.pid).map { $0 != "Z" } == true, "the supervisor ended with the thread that started it")
        let (fd, worker) = try supervisor.spawn(executable: backstopBinary, user: "nobody")
        close(fd)
        #expect(supervisor.killAndReap(worker) != nil)
    }

    /// The supervisor starts workers as the user it was started for only: a server taken
    /// over cannot have it start one as another user, and a worker_user a reload names is
    /// not asked for (SPFSettings warns of it).
    @Test(.enabled(if: geteuid() == 0, "only root starts the supervisor"))
    func theSupervisorStartsWorkersAsItsUserOnly() async throws {
        let supervisor = try SupervisorSpawner.start(executable: backstopBinary, user: "nobody")
        let refused = #expect(throws: SPFSpawnError.self) { try supervisor.spawn(as: "daemon") }
        #expect(refused?.description.contains("as \"nobody\" only") == true, "\(String(describing: refused))")
        let (fd, pid) = try supervisor.spawn(executable: backstopBinary, user: "daemon")
        defer {
            close(fd)
            _ = supervisor.killAndReap(pid)
        }
        let nobody = String(try #require(getpwnam("nobody")).pointee.pw_uid)
        for _ in 0..<200 where status(pid, "Uid") != Array(repeating: nobody, count: 4) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(status(pid, "Uid") == Array(repeating: nobody, count: 4))
        var settings = SPFSettings()
        settings.verifier.workerUser = "daemon"
        #expect(settings.workerUserUnreachable(running: "nobody").map(\.key) == ["worker_user"])
        #expect(settings.workerUserUnreachable(running: "daemon").isEmpty && settings.workerUserUnreachable(running: nil).isEmpty)
        // A server started as root without [spf] pins the default user; a reload that adds
        // [spf] while that default is server.user is refused, not run as the server's user.
        SPFSettings.register()
        let config = try Configuration.parse("[server]\nuser = \"nobody\"\n[spf]\nworker_user = \"daemon\"\n", file: "r.toml")
        #expect(settings.workerUserConflicts(with: config, running: "nobody").map(\.key) == ["worker_user"])
        #expect(settings.workerUserConflicts(with: config, running: "daemon").isEmpty && settings.workerUserConflicts(with: config, running: nil).isEmpty)
    }

    @Test(.enabled(if: geteuid() == 0, "only root can start workers as another user"))
    func workersRunSandboxedAsWorkerUser() async throws {
        let dns = try await LoopbackDNSServer.start(zone: workerZone)
        defer { dns.stop() }
        let nobody = try #require(getpwnam("nobody"))
        let (uid, gid) = (nobody.pointee.pw_uid, nobody.pointee.pw_gid)
        let supervisor = try SupervisorSpawner.start(executable: backstopBinary, user: "nobody")
        for spawner in [DirectSpawner() as any SPFSpawner, supervisor] {
            var settings = verifierSettings(dns)
            settings.workerUser = "nobody"
            let verifier = SPFVerifier(settings: settings, logger: testLogger, executable: backstopBinary, spawner: spawner)
            defer { verifier.shutdown() }
            #expect(await verifier.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h").result == .pass)
            let pid = try #require(await verifier.workerProcessIDs.first)
            #expect(status(pid, "Uid") == Array(repeating: String(uid), count: 4))
            #expect(status(pid, "Gid") == Array(repeating: String(gid), count: 4))
            #expect(status(pid, "Groups").allSatisfy { $0 == String(gid) })
            #expect(status(pid, "CapEff") == ["0000000000000000"] && status(pid, "CapPrm") == ["0000000000000000"])
            #expect(status(pid, "NoNewPrivs") == ["1"])
            #expect(status(pid, "Seccomp") == ["2"])
            let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { Int($0) }.sorted()
            #expect(fds == [0, 1, 2], "worker descriptors: \(fds)")
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/2") == "/dev/null")
            #expect(try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ")).isEmpty)
            let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
            #expect(limits.contains { _ in true } && limits.split(separator: "\n").contains { $0.hasPrefix("Max address space") && $0.contains("1073741824") })
            #expect(limits.split(separator: "\n").contains { $0.hasPrefix("Max open files") && $0.contains(" 3 ") })
        }
        // A worker_user that does not exist: the worker refuses to run as root.
        var broken = verifierSettings(dns)
        broken.workerUser = "backstop-no-such-user"
        let refused = SPFVerifier(settings: broken, logger: testLogger, executable: backstopBinary, spawner: DirectSpawner())
        defer { refused.shutdown() }
        let outcome = await refused.evaluate(ip: "192.0.2.5", sender: "a@example.org", helo: "h")
        #expect(outcome.result == .temperror)
        #expect(await restarts(refused, .exited, reaching: 1) == 1)
        // The filter kills a worker that tries to open a socket.
        let test = Process()
        test.executableURL = URL(fileURLWithPath: backstopBinary)
        test.arguments = ["spf-worker", "--sandbox-test", "--user", "nobody"]
        try test.run()
        test.waitUntilExit()
        #expect(test.terminationReason == .uncaughtSignal && test.terminationStatus == SIGSYS)
    }
}
