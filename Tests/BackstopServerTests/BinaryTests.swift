// The `backstop` executable as an administrator runs it: check-config's messages and exit
// codes, serve + query with the example configuration, SIGHUP reload, SIGTERM stop, and
// the metrics endpoint scraped after real traffic.

import Testing
import Foundation
import BackstopSPF
import NIOConcurrencyHelpers
@testable import BackstopCore
@testable import BackstopServer

/// The package root, found from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The `backstop` built beside the running tests (`.build/debug` or `.build/release`).
let backstopBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    .deletingLastPathComponent().appendingPathComponent("backstop").path

struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
}

func runBackstop(_ arguments: [String], stdin: String? = nil) throws -> Run {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: backstopBinary)
    process.arguments = arguments
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return Run(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// A `backstop serve` child process with its log collected in a file.
final class ServeProcess {
    let process = Process()
    let logPath: String

    /// `journal`: run as under systemd, with JOURNAL_STREAM naming the log file;
    /// `environment`: more variables (NOTIFY_SOCKET).
    /// `unblockSignals`: start it with no signal blocked, as systemd does. Foundation starts
    /// a child with the calling thread's signal mask, and the test's threads block most
    /// signals, so a signal sent early would wait instead of acting; a small wrapper clears
    /// the mask and becomes backstop.
    /// `binary`: another copy of backstop to run.
    init(config: String, logName: String = "serve.log", journal: Bool = false, environment extra: [String: String] = [:],
         unblockSignals: Bool = false, binary: String = backstopBinary) throws {
        logPath = (config as NSString).deletingLastPathComponent + "/" + logName
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        var environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        // Workers must come from /proc/self/exe here (a developer's profiling variable would
        // make the binary-replacement test test nothing).
        if extra[SPFProcesses.executableVariable] == nil { environment[SPFProcesses.executableVariable] = nil }
        if journal {
            var info = stat()
            stat(logPath, &info)
            environment["JOURNAL_STREAM"] = "\(info.st_dev):\(info.st_ino)"
        }
        process.environment = environment
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", "--config", config]
        if unblockSignals {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-c", "import os, signal, sys; signal.signal(signal.SIGPIPE, signal.SIG_DFL); "
                                 + "signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv(sys.argv[1], sys.argv[1:])",
                                 binary, "serve", "--config", config]
        }
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the log holds `text` at least `count` times.
    func waitForLog(_ text: String, count: Int = 1, seconds: Double = 20) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if log.components(separatedBy: text).count - 1 >= count { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    func stop() -> Int32 {
        if process.isRunning { signal(SIGTERM) }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// A port nobody listens on now, and one this process has not handed out before: tests run
/// in parallel, and the kernel may give the same free port to two of them before either
/// binds it.
func freePort() -> Int {
    while true {
        let port = unusedPort()
        if handedOutPorts.withLockedValue({ $0.insert(port).inserted }) { return port }
    }
}

private let handedOutPorts = NIOLockedValueBox<Set<Int>>([])

private func unusedPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Copies examples/ to a temp dir and points its listener at a free port.
func exampleCopy() throws -> (dir: String, config: String, port: Int) {
    let dir = tempDirectory()
    let examples = packageRoot + "/examples"
    for name in try FileManager.default.contentsOfDirectory(atPath: examples) {
        try FileManager.default.copyItem(atPath: examples + "/" + name, toPath: dir + "/" + name)
    }
    let port = freePort()
    let config = dir + "/backstop.toml"
    let text = try String(contentsOfFile: config, encoding: .utf8)
        .replacingOccurrences(of: "address = \"127.0.0.1:10033\"", with: "address = \"127.0.0.1:\(port)\"")
    try text.write(toFile: config, atomically: true, encoding: .utf8)
    return (dir, config, port)
}

@Suite(.serialized) struct BinaryTests {
    @Test func checkConfigAcceptsTheExample() throws {
        let run = try runBackstop(["check-config", "--strict", packageRoot + "/examples/backstop.toml"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.hasSuffix(": OK\n") && run.stderr.isEmpty, "no warnings either: \(run.stderr)")
    }

    /// examples/batv.toml passes check-config once its key file exists, made as its comment
    /// says (its comment made one in /etc/backstop, not beside the file, where key_file points).
    @Test func checkConfigAcceptsTheBATVExampleWithTheKeyItsCommentMakes() throws {
        let dir = tempDirectory()
        let example = try String(contentsOfFile: packageRoot + "/examples/batv.toml", encoding: .utf8)
        try example.write(toFile: dir + "/batv.toml", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: packageRoot + "/examples/recipients", toPath: dir + "/recipients")
        // The commands of the comment, run in the copy's directory.
        let commands = example.split(separator: "\n").filter { $0.hasPrefix("#   ") && $0.contains("batv-keys") && !$0.contains("check-config") }
            .map { $0.dropFirst(4) }.joined(separator: " && ")
        #expect(!commands.isEmpty && !commands.contains("/etc/"), "\(commands)")
        let made = Process()
        made.executableURL = URL(fileURLWithPath: "/bin/sh")
        made.arguments = ["-c", commands]
        made.currentDirectoryURL = URL(fileURLWithPath: dir)
        try made.run()
        made.waitUntilExit()
        #expect(made.terminationStatus == 0)
        let run = try runBackstop(["check-config", "--strict", dir + "/batv.toml"])
        #expect(run.status == 0, "\(run.stderr)")
    }

    @Test func checkConfigWarnsAboutWhatCanNeverRunAndStrictFails() throws {
        let dir = tempDirectory()
        let path = dir + "/dead.toml"
        try "[policy]\nrcpt = []\n[bounces]\n".write(toFile: path, atomically: true, encoding: .utf8)
        let lenient = try runBackstop(["check-config", path])
        #expect(lenient.status == 0)
        #expect(lenient.stdout == "\(path): OK, with 1 warning(s)\n")
        #expect(lenient.stderr == "warning: \(path):3: bounces: [bounces] is configured but listed in no [policy] stage, so it never runs\n")
        let strict = try runBackstop(["check-config", "--strict", path])
        #expect(strict.status == 1)
        #expect(strict.stderr.contains("1 warning(s), and --strict fails on them"))
    }

    @Test func checkConfigListsEveryProblemWithFileAndLine() throws {
        let dir = tempDirectory()
        let path = dir + "/bad.toml"
        try "[server]\nmax_connections = 0\nidle = \"5s\"\n[policy]\nrcpt = [\"nope\"]\n".write(toFile: path, atomically: true, encoding: .utf8)
        let run = try runBackstop(["check-config", path])
        #expect(run.status == 1)
        let lines = run.stderr.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines.contains { $0.hasPrefix("\(path):2: server.max_connections: 0 is out of range") })
        #expect(lines.contains("\(path):3: server.idle: unknown key (check the spelling; see docs/configuration.md)"))
        #expect(lines.contains { $0.hasPrefix("\(path):5: policy.rcpt: unknown check \"nope\"") })
        let missing = try runBackstop(["check-config", dir + "/missing.toml"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("missing.toml: cannot read the configuration: open failed: No such file or directory"), "\(missing.stderr)")
    }

    @Test func serveWithTheExampleAndQueryPrintsDunno() async throws {
        let (_, config, port) = try exampleCopy()
        let serve = try ServeProcess(config: config)
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        let query = try runBackstop(["query", "--server", "127.0.0.1:\(port)"])
        #expect(query.status == 0)
        #expect(query.stdout == "action=DUNNO\n")
        let raw = try runBackstop(["query", "--server", "127.0.0.1:\(port)", "--stdin"],
                                  stdin: "request=smtpd_access_policy\nprotocol_state=DATA\nsender=\nrecipient_count=1\n\n")
        #expect(raw.stdout.hasPrefix("action="))
        // The server from --config; the exit status says what the answer was.
        let refused = try runBackstop(["query", "--config", config, "--recipient", "nobody@example.com", "--client-address", "192.0.2.9"])
        #expect(refused.stdout == "action=550 5.1.1 User unknown\n", "\(refused.stdout)\(refused.stderr)")
        #expect(refused.status == 1)
        let unreachable = try runBackstop(["query", "--server", "127.0.0.1:1"])
        #expect(unreachable.status == 3)
        #expect(serve.stop() == 0)
        #expect(serve.log.contains("backstop stopped"))
    }

    /// A server that never answers: after the client's 10 s `query` could not ask (exit 3,
    /// docs/operations.md); the timeout it threw went out as exit 1, the code of a refusal.
    @Test func queryWithoutAnAnswerExitsThree() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) == 0 && listen(listener, 4) == 0 && getsockname(listener, $0, &length) == 0 }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 4096)
            // The request arrives; no answer, until the client gives up and closes.
            while read(client, &buffer, buffer.count) > 0 {}
            close(client)
        }
        thread.start()
        let query = try runBackstop(["query", "--server", "127.0.0.1:\(port)"])
        #expect(query.status == 3, "\(query.status) \(query.stderr)")
        #expect(query.stderr.contains("no answer from"), "\(query.stderr)")
    }

    /// A client refused by `allow` as often as it connects gets one log line per second, and
    /// the lines together account for every refusal.
    @Test func refusalsAreLoggedOncePerSecondWithACount() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let config = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\nallow = [\"192.0.2.0/24\"]\n".write(toFile: config, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: config)
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        let line = "connection refused: client not in the listener's allow list"
        for _ in 0..<40 { _ = try? PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port)).ask(rcptRequest) }
        #expect(await serve.waitForLog(line))
        try? await Task.sleep(for: .milliseconds(1_100))
        _ = try? PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port)).ask(rcptRequest)
        #expect(await serve.waitForLog(line, count: 2))
        #expect(serve.stop() == 0)
        let lines = serve.log.split(separator: "\n").filter { $0.contains(line) }
        #expect(lines.count >= 2 && lines.count < 10, "\(lines.count) lines for 41 refusals")
        let accounted = lines.reduce(0) { total, l in
            guard let open = l.range(of: " ("), let more = Int(l[open.upperBound...].prefix { $0.isNumber }) else { return total + 1 }
            return total + 1 + more
        }
        #expect(accounted == 41, "\(lines)")
    }

    @Test func lookupSaysValidUnknownOrNotOurDomain() throws {
        let config = packageRoot + "/examples/backstop.toml"
        let valid = try runBackstop(["lookup", "alice@example.com", "--config", config])
        #expect(valid.status == 0)
        #expect(valid.stdout.contains("valid ("))
        #expect(valid.stdout.contains("recipients:"))
        let unknown = try runBackstop(["lookup", "nobody-here@example.com", "--config", config])
        #expect(unknown.status == 1)
        #expect(unknown.stdout.contains("unknown"))
        let foreign = try runBackstop(["lookup", "someone@elsewhere.example", "--config", config])
        #expect(foreign.status == 2)
        #expect(foreign.stdout.contains("not our domain"))
        let dir = tempDirectory()
        try "good@example.net OK\nbad line without a domain\n".write(toFile: dir + "/table", atomically: true, encoding: .utf8)
        let broken = try runBackstop(["lookup", "good@example.net", "--table", dir + "/table"])
        #expect(broken.status == 3)
        #expect(broken.stderr.contains(dir + "/table:2:"))
    }

    @Test func startupFailsClearlyOnABrokenConfig() throws {
        let dir = tempDirectory()
        let path = dir + "/broken.toml"
        try "[policy]\ndeadline = \"eventually\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let run = try runBackstop(["serve", "--config", path])
        #expect(run.status == 78)
        #expect(run.stderr.contains("\(path):2: policy.deadline: expected a duration"))
    }

    @Test func sighupReloadsAndABrokenEditKeepsTheRunningConfig() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        let good = "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\ntest_mode = false\n"
        try good.write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        #expect(await serve.waitForLog("backstop started"))
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\ntest_mode = perhaps\n".write(toFile: path, atomically: true, encoding: .utf8)
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("reload failed, keeping the running configuration: \(path):4: TOML syntax error"))
        #expect(try runBackstop(["query", "--server", "127.0.0.1:\(port)"]).stdout == "action=DUNNO\n")
        try good.write(toFile: path, atomically: true, encoding: .utf8)
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("configuration reloaded"))
        #expect(serve.stop() == 0)
    }

    /// A SIGHUP while the tables load (a table generator that signals as soon as it wrote)
    /// is a reload once the server runs; by default it would end the process, and systemd
    /// does not restart a unit that a HUP ended.
    @Test func sighupWhileStartingIsAReloadOnceRunning() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let table = dir + "/recipients", path = dir + "/backstop.toml"
        // ~1 s to load in a debug build: long enough to signal in the middle of it.
        try (1...200_000).map { "user\($0)@example.org OK\n" }.joined().write(toFile: table, atomically: true, encoding: .utf8)
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\nrcpt = [\"recipients\"]\n[recipients]\ntables = [\"\(table)\"]\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path, unblockSignals: true)
        defer { _ = serve.stop() }
        let pid = serve.process.processIdentifier
        // Signalled as soon as backstop blocks SIGHUP, which it does before it starts any
        // thread: the main thread's mask is then SIGHUP alone. (While glibc creates a thread
        // it blocks every signal for a moment, which says nothing of SIGHUP's fate: a mask
        // of all signals once passed for handled, and the HUP sent then ended the server.)
        // A server that never blocks it is signalled only after 10 s, once started, and
        // fails below; a loaded machine may take a while.
        func handlesHangups() -> Bool {
            processStatus(pid, "SigBlk").flatMap { UInt64($0, radix: 16) } == 1
        }
        let started = Date()
        // (python3 first, backstop once it has exec'd.)
        while !((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe"))?.hasSuffix("/backstop") == true && handlesHangups())
                && Date().timeIntervalSince(started) < 10 { usleep(2_000) }  // blocking: a suspension could resume after the load
        if serve.log.contains("backstop started") { Issue.record("the table loaded before the signal: make it bigger") }
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        #expect(await serve.waitForLog("configuration reloaded"), "\(serve.log)")
        #expect(serve.process.isRunning)
        #expect(try runBackstop(["query", "--server", "127.0.0.1:\(port)", "--recipient", "user5@example.org"]).stdout == "action=DUNNO\n")
        #expect(serve.stop() == 0)
    }

    @Test func summaryLineCountsAnswers() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[log]\nlevel = \"notice\"\nsummary_interval = \"1s\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        for _ in 0..<5 { _ = try client.ask(rcptRequest) }
        // The counts start again at each line: the five may be split over two lines.
        func counted(_ field: String) -> Int {
            serve.log.split(separator: "\n").filter { $0.contains("summary interval=1s ") }.reduce(0) { sum, line in
                let value = line.split(separator: " ").first { $0.hasPrefix(field + "=") }?.dropFirst(field.count + 1)
                return sum + (value.flatMap { Int($0) } ?? 0)
            }
        }
        let end = Date().addingTimeInterval(20)
        while counted("requests") < 5 && Date() < end { try await Task.sleep(for: .milliseconds(50)) }
        #expect(counted("requests") == 5 && counted("dunno") == 5, "\(serve.log)")
        #expect(counted("ok") == 0 && counted("reject") == 0 && counted("defer") == 0, "\(serve.log)")
    }

    @Test func underTheJournalEachLineCarriesItsPriority() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path, journal: true)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("<5>notice backstop started"), "\(serve.log)")
        #expect(serve.log.contains("<4>warning running as root") || geteuid() != 0, "\(serve.log)")
        let plain = try ServeProcess(config: path, logName: "plain.log")
        defer { _ = plain.stop() }
        _ = await plain.waitForLog("cannot start")
        #expect(!plain.log.contains("<2>") && plain.log.contains(" critical cannot start"), "no prefix without the journal: \(plain.log)")
        // The bind failure names the address in use.
        #expect(plain.log.contains("cannot start: cannot listen on 127.0.0.1:\(port): Address already in use"), "\(plain.log)")
        #expect(plain.stop() == 71)
    }

    @Test func decisionLinesNameEveryCheckAndFollowLogDecisions() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "known@example.com OK\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        let base = "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[policy]\nrcpt = [\"recipients\", \"bounces\"]\n[recipients]\ntables = [\"recipients\"]\n[log]\n"
        try (base + "decisions = \"all\"\n").write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        var known = rcptRequest
        known[4] = ("recipient", "known@example.com")
        known.append(("helo_name", "mx.example.org"))
        known.append(("sasl_username", "alice"))
        _ = try client.ask(known)
        #expect(await serve.waitForLog("helo_name=mx.example.org sasl_username=alice protocol_state=RCPT check=recipients action=DUNNO reason=known_recipient recipients=known_recipient bounces=ok elapsed_us="), "\(serve.log)")
        // Only refusals: the accepted recipient writes no line, the unknown one does.
        try (base + "decisions = \"refusals\"\n").write(toFile: path, atomically: true, encoding: .utf8)
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("configuration reloaded"))
        _ = try client.ask(known)
        _ = try client.ask(rcptRequest)
        #expect(await serve.waitForLog("reason=unknown_recipient recipients=unknown_recipient elapsed_us="), "\(serve.log)")
        #expect(serve.log.components(separatedBy: "reason=known_recipient").count == 2, "one line for the first request only")
    }

    @Test func rateLimitStatusOfARunningServer() async throws {
        let dir = tempDirectory()
        let port = freePort(), metricsPort = freePort()
        let path = dir + "/backstop.toml"
        try ("[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[metrics]\nlisten = \"127.0.0.1:\(metricsPort)\"\n"
            + "[policy]\nrcpt = [\"ratelimit\"]\n[ratelimit]\n[[ratelimit.rule]]\nname = \"per_client\"\nkey = \"client_address\"\n"
            + "count = \"recipient\"\nlimit = \"3/1h\"\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        var answers: [String] = []
        for _ in 0..<4 { answers.append(try client.ask(rcptRequest) ?? "closed") }
        #expect(answers[0..<3].allSatisfy { $0 == "action=DUNNO" || $0.hasPrefix("action=DUNNO") }, "\(answers)")
        #expect(answers[3].hasPrefix("action=DEFER 4.7.1"), "\(answers)")
        let status = try runBackstop(["ratelimit", "status", "--rule", "per_client", "--key", "192.0.2.1", "--config", path])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains("rule per_client"))
        #expect(status.stdout.contains("key 192.0.2.1: over the limit: 0 of 3 available"), "\(status.stdout)")
        let unknown = try runBackstop(["ratelimit", "status", "--rule", "nope", "--key", "x", "--metrics", "127.0.0.1:\(metricsPort)"])
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("no rule named \"nope\""))
        // The key as the log prints it (the rule's network) is the same key.
        let asLogged = try runBackstop(["ratelimit", "status", "--rule", "per_client", "--key", "192.0.2.1/32", "--config", path])
        #expect(asLogged.stdout.contains("key 192.0.2.1: over the limit"), "\(asLogged.stdout)\(asLogged.stderr)")
        let notAnAddress = try runBackstop(["ratelimit", "status", "--rule", "per_client", "--key", "not-an-ip", "--config", path])
        #expect(notAnAddress.status == 1)
        #expect(notAnAddress.stderr.contains("rule per_client: \"not-an-ip\" is not an IP address or network"), "\(notAnAddress.stderr)")
    }

    @Test func rateLimitListResetAndCountersThatSurviveARestart() async throws {
        let dir = tempDirectory()
        let port = freePort(), metricsPort = freePort()
        let path = dir + "/backstop.toml"
        try ("[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[metrics]\nlisten = \"127.0.0.1:\(metricsPort)\"\n"
            + "[policy]\nrcpt = [\"ratelimit\"]\n[ratelimit]\nstate_file = \"ratelimit.state\"\n"
            + "[[ratelimit.rule]]\nname = \"per_client\"\nkey = \"client_address\"\ncount = \"recipient\"\nlimit = \"3/1h\"\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        func fill(_ client: PolicyClient, _ address: String, _ times: Int) throws -> [String] {
            var request = rcptRequest
            request[2] = ("client_address", address)
            return try (0..<times).map { _ in try client.ask(request) ?? "closed" }
        }
        var serve = try ServeProcess(config: path)
        let client = try await waitForClient(port: port)
        #expect(try fill(client, "192.0.2.1", 4).last?.hasPrefix("action=DEFER 4.7.1") == true)
        _ = try fill(client, "192.0.2.2", 2)
        _ = try fill(client, "192.0.2.3", 1)
        let listed = try runBackstop(["ratelimit", "list", "--rule", "per_client", "--config", path])
        #expect(listed.status == 0, "\(listed.stderr)")
        let lines = listed.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 4 && lines[1].hasPrefix("key 192.0.2.1: over the limit") && lines[2].hasPrefix("key 192.0.2.2: 1 of 3"),
                "\(listed.stdout)")
        #expect(lines.last?.contains("names only keys that used more than half") == true)
        let over = try runBackstop(["ratelimit", "list", "--rule", "per_client", "--over", "--config", path])
        #expect(over.stdout.split(separator: "\n").filter { $0.hasPrefix("key ") }.count == 1, "\(over.stdout)")
        // Stop and start: the state is saved and loaded.
        #expect(serve.stop() == 0)
        #expect(FileManager.default.fileExists(atPath: dir + "/ratelimit.state"), "saved on stop")
        serve = try ServeProcess(config: path, logName: "serve2.log")
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("rate-limit state loaded"), "\(serve.log)")
        let again = try await waitForClient(port: port)
        let after = try fill(again, "192.0.2.1", 1)
        #expect(after.first?.hasPrefix("action=DEFER 4.7.1") == true, "over the limit before the restart, and after: \(after)")
        let status = try runBackstop(["ratelimit", "status", "--rule", "per_client", "--key", "192.0.2.2", "--config", path])
        #expect(status.stdout.contains("key 192.0.2.2: 1 of 3 available now"), "\(status.stdout)")
        // Reset forgets the key; GET is refused for it.
        let reset = try runBackstop(["ratelimit", "reset", "--rule", "per_client", "--key", "192.0.2.1", "--config", path])
        #expect(reset.status == 0 && reset.stdout.contains("state forgotten: all 3 available again"), "\(reset.stdout)\(reset.stderr)")
        #expect(await serve.waitForLog("rate-limit key reset by the administrator"), "\(serve.log)")
        #expect(try fill(again, "192.0.2.1", 1) == ["action=DUNNO"])
        #expect(try scrape(port: metricsPort, path: "/ratelimit/reset?rule=per_client&key=192.0.2.2").contains("405"))
        // A POST without the command's header (what a web page can make a browser send) is
        // refused, and the key keeps its state.
        let forged = try PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: metricsPort))
        try forged.send(Array("POST /ratelimit/reset?rule=per_client&key=192.0.2.2 HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n".utf8))
        #expect(try forged.readAll().hasPrefix("HTTP/1.0 403"))
        let kept = try runBackstop(["ratelimit", "status", "--rule", "per_client", "--key", "192.0.2.2", "--config", path])
        #expect(kept.stdout.contains("key 192.0.2.2: 1 of 3 available now"), "\(kept.stdout)")
        let damaged = try runBackstop(["ratelimit", "reset", "--rule", "per_client", "--key", "nonsense", "--config", path])
        #expect(damaged.status == 1)
        // An out-of-range --limit is a usage error (the server clamped it without a word).
        let tooMany = try runBackstop(["ratelimit", "list", "--rule", "per_client", "--limit", "5000", "--config", path])
        #expect(tooMany.status == 64 && tooMany.stderr.contains("--limit must be 1 to 1000"), "\(tooMany.stderr)")
    }

    @Test func benchRunsItsServerOnTheGivenPort() throws {
        let port = freePort()
        let run = try runBackstop(["bench", "--config", packageRoot + "/examples/backstop.toml", "--port", String(port),
                                   "-d", "1", "-w", "0", "-C", "1"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("in-process server on 127.0.0.1:\(port) "), "\(run.stdout)")
        #expect(run.stdout.contains("req/s"), "\(run.stdout)")
    }

    @Test func systemdHearsReadyReloadingAndStopping() throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        // What systemd listens on: a datagram socket named by NOTIFY_SOCKET.
        let socketPath = dir + "/notify"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in socketPath.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        func next() -> String {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : "(nothing)"
        }
        let serve = try ServeProcess(config: path, environment: ["NOTIFY_SOCKET": socketPath])
        defer { _ = serve.stop() }
        let ready = next()
        #expect(ready.hasPrefix("READY=1\nSTATUS=answering on 127.0.0.1:\(port)"), "\(ready)")
        // Ready means ready: the listener answers at once.
        #expect(try PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port)).ask(rcptRequest) == "action=DUNNO")
        serve.signal(SIGHUP)
        #expect(next().hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        #expect(next() == "READY=1")
        serve.signal(SIGTERM)
        #expect(next() == "STOPPING=1")
        #expect(serve.stop() == 0)
    }

    @Test func oneVersionForTheBinaryAndThePackage() throws {
        let run = try runBackstop(["--version"])
        #expect(run.stdout == BuildInfo.version + "\n", "\(run.stdout)")
        // packaging/debian/changelog's top entry names the same version (scripts/package checks it too).
        let changelog = try String(contentsOfFile: packageRoot + "/packaging/debian/changelog", encoding: .utf8)
        #expect(changelog.hasPrefix("backstop (\(BuildInfo.version)) "), "\(changelog.prefix(60))")
    }

    @Test func metricsEndpointCountsRealTraffic() async throws {
        let dir = tempDirectory()
        let port = freePort(), metricsPort = freePort()
        let path = dir + "/backstop.toml"
        try "known@example.com OK\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        try ("[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[metrics]\nlisten = \"127.0.0.1:\(metricsPort)\"\n[log]\nlevel = \"warning\"\n"
            + "[policy]\nrcpt = [\"recipients\"]\n[recipients]\ntables = [\"recipients\"]\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        for _ in 0..<7 { _ = try client.ask(rcptRequest) }  // b@example.com: unknown
        var known = rcptRequest
        known[4] = ("recipient", "known@example.com")
        _ = try client.ask(known)
        let bad = try PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port))
        try bad.send(Array("nonsense\n\n".utf8))
        _ = try bad.readAnswer()
        let text = try scrape(port: metricsPort)
        #expect(text.contains("backstop_requests_total{protocol_state=\"RCPT\",action=\"reject\"} 7"), "\(text)")
        #expect(text.contains("backstop_requests_total{protocol_state=\"RCPT\",action=\"dunno\"} 1"))
        #expect(text.contains("backstop_recipients_lookups_total{result=\"unknown\"} 7"))
        #expect(text.contains("backstop_recipients_lookups_total{result=\"known\"} 1"))
        #expect(text.contains("backstop_check_duration_seconds_count{check=\"recipients\"} 8"))
        #expect(text.contains("backstop_recipients_table_entries{kind=\"mailbox\"} 1"))
        #expect(text.contains("backstop_protocol_errors_total 1"))
        #expect(text.contains("backstop_request_duration_seconds_count 8"))
        #expect(text.contains("backstop_config_generation 1"))
        // Every metric has its help line, and the build and process metrics are there.
        let body = try #require(text.range(of: "\r\n\r\n")).upperBound
        let lines = text[body...].split(separator: "\n").map(String.init)
        for (index, line) in lines.enumerated() where line.hasPrefix("# TYPE ") {
            let name = line.split(separator: " ")[2]
            #expect(index > 0 && lines[index - 1].hasPrefix("# HELP \(name) "), "no help for \(name): \(lines[max(0, index - 3)...index])")
        }
        #expect(text.contains("backstop_build_info{version=\"\(BuildInfo.version)\"} 1"))
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_start_time_seconds"] {
            #expect(lines.contains { $0.hasPrefix(name + " ") }, "\(name) missing")
        }
    }
}

func waitForClient(port: Int) async throws -> PolicyClient {
    let end = Date().addingTimeInterval(20)
    while true {
        do { return try PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port)) } catch {
            if Date() > end { throw error }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// A minimal HTTP GET over a socket, so the test needs nothing but the server.
func scrape(port: Int, path: String = "/metrics") throws -> String {
    let client = try PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port))
    try client.send(Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8))
    return try client.readAll()
}

extension BinaryTests {
    /// BATV's counters and the socketmap's, as /metrics shows them after real traffic.
    @Test func batvAndSocketmapAreCounted() async throws {
        let dir = tempDirectory()
        let port = freePort(), mapPort = freePort(), metricsPort = freePort()
        let path = dir + "/backstop.toml"
        try "alice@example.org\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        try "1 0123456789abcdef-secret-one\n".write(toFile: dir + "/batv-keys", atomically: true, encoding: .utf8)
        chmod(dir + "/batv-keys", 0o600)
        try """
            [[listen]]
            address = "127.0.0.1:\(port)"
            [[listen]]
            address = "127.0.0.1:\(mapPort)"
            protocol = "socketmap"
            [metrics]
            listen = "127.0.0.1:\(metricsPort)"
            [log]
            level = "warning"
            [policy]
            rcpt = ["recipients", "batv"]
            [recipients]
            tables = ["recipients"]
            domains = ["example.org"]
            [batv]
            domains = ["example.org"]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        // The listeners are bound one after another: wait for each (connecting to the
        // socketmap port the moment the policy port answered was refused now and then).
        _ = try await waitForClient(port: mapPort)
        _ = try await waitForClient(port: metricsPort)
        let map = try RawConnection(port: mapPort)
        let signed = try #require(map.ask("batv-sign", "alice@example.org")).dropFirst(3)
        #expect(map.ask("batv-strip", String(signed)) == "OK alice@example.org")
        #expect(map.ask("recipients", "nobody@example.org") == "NOTFOUND ")
        #expect(map.ask("nonsense", "x")?.hasPrefix("PERM") == true)
        func bounce(to recipient: String) throws -> String? {
            var request = rcptRequest
            request[3] = ("sender", "")
            request[4] = ("recipient", recipient)
            return try client.ask(request)
        }
        #expect(try bounce(to: String(signed)) == "action=DUNNO")
        #expect(try bounce(to: "alice@example.org")?.hasPrefix("action=550 5.7.1") == true)
        #expect(try bounce(to: "alice@example.org")?.hasPrefix("action=550 5.7.1") == true)
        #expect(try bounce(to: "prvs=9000000000=alice@example.org")?.hasPrefix("action=550 5.7.1") == true)
        let text = try scrape(port: metricsPort)
        #expect(text.contains("backstop_batv_signed_total 1"), "\(text)")
        #expect(text.contains("backstop_batv_stripped_total 1"))
        #expect(text.contains("backstop_batv_verified_total 1"))
        #expect(text.contains("backstop_batv_refused_total{reason=\"no_tag\"} 2"))
        #expect(text.contains("backstop_batv_refused_total{reason=\"unknown_key\"} 1"))
        #expect(text.contains("backstop_socketmap_requests_total{map=\"batv-sign\",reply=\"ok\"} 1"))
        #expect(text.contains("backstop_socketmap_requests_total{map=\"recipients\",reply=\"notfound\"} 1"))
        #expect(text.contains("backstop_socketmap_requests_total{map=\"unknown\",reply=\"perm\"} 1"))
    }
}

extension BinaryTests {
    /// A reload builds its new tables before it knows whether the rest of the file is good.
    /// One that then fails must leave the gauges of the tables still answering: before, the
    /// table loaded for the failed configuration set them.
    @Test func aFailedReloadLeavesTheGaugesOfTheTablesInForce() async throws {
        let dir = tempDirectory()
        let port = freePort(), metricsPort = freePort()
        let path = dir + "/backstop.toml"
        func write(_ text: String, _ file: String) throws { try text.write(toFile: dir + "/" + file, atomically: true, encoding: .utf8) }
        func config(recipients: String, overrides: String) throws {
            try write("[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[metrics]\nlisten = \"127.0.0.1:\(metricsPort)\"\n"
                      + "[policy]\nrcpt = [\"recipients\", \"ratelimit\"]\n[recipients]\ntables = [\"\(recipients)\"]\n"
                      + "[ratelimit]\n[[ratelimit.rule]]\nname = \"r\"\nkey = \"sasl_username\"\ncount = \"recipient\"\n"
                      + "limit = \"500/1d\"\noverrides = \"\(overrides)\"\n", "backstop.toml")
        }
        /// Whether the two gauges show the first tables (1 entry each), and their lines.
        func gauges() throws -> (mailboxes: Bool, overrides: Bool, text: String) {
            let lines = try scrape(port: metricsPort).split(separator: "\n").map(String.init)
                .filter { $0.hasPrefix("backstop_recipients_table_entries{kind=\"mailbox\"}") || $0.hasPrefix("backstop_ratelimit_overrides{") }
            return (lines.contains("backstop_recipients_table_entries{kind=\"mailbox\"} 1.0"),
                    lines.contains("backstop_ratelimit_overrides{rule=\"r\"} 1.0"), lines.joined(separator: "; "))
        }
        try write("a@example.com\n", "recipients-a")
        try write("a@example.com\nb@example.com\nc@example.com\n", "recipients-b")
        try write("a@example.com\nbroken line without an at\n", "recipients-c")
        try write("newsletter 20000/1d\n", "overrides-a")
        try write("newsletter 20000/1d\nhelpdesk not-a-limit\n", "overrides-b")
        try config(recipients: "recipients-a", overrides: "overrides-a")
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"))
        var now = try gauges()
        #expect(now.mailboxes && now.overrides, "\(now.text)")

        // A good new recipient table (3 entries), broken overrides: the reload fails.
        try config(recipients: "recipients-b", overrides: "overrides-b")
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("reload failed", count: 1))
        now = try gauges()
        #expect(now.mailboxes, "the failed reload's recipient table set the gauge: \(now.text)")

        // Good new overrides (2 entries), a broken recipient table: it fails again.
        try write("newsletter 20000/1d\nhelpdesk 2000/1d\n", "overrides-b")
        try config(recipients: "recipients-c", overrides: "overrides-b")
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("reload failed", count: 2))
        now = try gauges()
        #expect(now.overrides, "the failed reload's overrides set the gauge: \(now.text)")
        #expect(now.mailboxes)

        // Both good: now the new tables answer, and their gauges say so.
        try config(recipients: "recipients-b", overrides: "overrides-b")
        serve.signal(SIGHUP)
        #expect(await serve.waitForLog("configuration reloaded"))
        now = try gauges()
        #expect(now.text.contains("backstop_recipients_table_entries{kind=\"mailbox\"} 3.0"), "\(now.text)")
        #expect(now.text.contains("backstop_ratelimit_overrides{rule=\"r\"} 2.0"), "\(now.text)")
        #expect(serve.stop() == 0)
    }
}

extension BinaryTests {
    /// `query --config` asks the first *policy* listener: with a socketmap listener listed
    /// first it sent the policy request to the socketmap port and got no answer (exit 3).
    @Test func queryAsksThePolicyListenerWhateverComesFirst() async throws {
        let dir = tempDirectory()
        let port = freePort(), mapPort = freePort()
        let path = dir + "/backstop.toml"
        try """
            [[listen]]
            address = "127.0.0.1:\(mapPort)"
            protocol = "socketmap"
            [[listen]]
            address = "127.0.0.1:\(port)"
            [log]
            level = "warning"
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        _ = try await waitForClient(port: port)
        _ = try await waitForClient(port: mapPort)
        let query = try runBackstop(["query", "--config", path])
        #expect(query.status == 0, "\(query.stderr)")
        #expect(query.stdout == "action=DUNNO\n")
        #expect(serve.stop() == 0)
    }
}

extension BinaryTests {
    /// `backstop batv sign` builds the check as the server does, with [recipients]'
    /// recipient_delimiter: an excluded sender's extension address is not signed (the
    /// command signed it while the server did not).
    @Test func batvSignFollowsTheRecipientDelimiterAsTheServerDoes() throws {
        let dir = tempDirectory()
        try "alice@example.org\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        try "1 0123456789abcdef-secret-one\n".write(toFile: dir + "/batv-keys", atomically: true, encoding: .utf8)
        chmod(dir + "/batv-keys", 0o600)
        let path = dir + "/backstop.toml"
        try """
            [policy]
            rcpt = ["recipients", "batv"]
            [recipients]
            tables = ["recipients"]
            recipient_delimiter = "+"
            [batv]
            domains = ["example.org"]
            exclude_senders = ["list@example.org"]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let excluded = try runBackstop(["batv", "sign", "list+owner@example.org", "--config", path])
        #expect(excluded.status == 1, "\(excluded.stdout)")
        let signed = try runBackstop(["batv", "sign", "alice@example.org", "--config", path])
        #expect(signed.status == 0 && signed.stdout.hasPrefix("prvs="), "\(signed.stdout)\(signed.stderr)")
    }
}
