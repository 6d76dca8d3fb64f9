// Faults at the server's edges, each shown happening: a Unix socket left by a killed
// server is replaced while a live one is never taken; the metrics listener refuses clients
// outside metrics.allow, caps its connections, counts them in server.max_connections and
// closes half-sent and idle requests; files that are not regular files are refused.

import Testing
import Foundation
import Logging
import NIOCore
import Prometheus
@testable import BackstopCore
@testable import BackstopServer

/// A plain loopback TCP connection that can tell whether the peer closed it.
final class RawConnection: @unchecked Sendable {  // used by one thread at a time
    let fd: Int32

    init(port: Int) throws {
        // `fd` is set only once connected: a throwing initializer runs deinit, which must
        // not close the descriptor a second time.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 { close(fd); throw ServerError("connect: \(String(cString: strerror(errno)))") }
        self.fd = fd
    }

    deinit { close(fd) }

    func send(_ text: String) { _ = Array(text.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Reads until the peer closes or `seconds` pass; returns what came and whether it closed.
    func readUntilClosed(seconds: Double) -> (text: String, closed: Bool) { read(until: nil, seconds: seconds) }

    /// The same, and stops as soon as what came holds `marker`.
    func read(until marker: String?, seconds: Double) -> (text: String, closed: Bool) {
        var all: [UInt8] = []
        let end = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while Date() < end {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(1, end.timeIntervalSinceNow * 1000))
            guard poll(&p, 1, left) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return (String(decoding: all, as: UTF8.self), true) }
            all.append(contentsOf: buffer[..<n])
            if let marker, String(decoding: all, as: UTF8.self).contains(marker) { break }
        }
        return (String(decoding: all, as: UTF8.self), false)
    }
}

@Suite(.serialized) struct ListenerFaultTests {
    // MARK: Unix sockets

    @Test func socketOfAKilledServerIsReplaced() async throws {
        let dir = tempDirectory()
        let path = dir + "/policy.sock"
        try "[[listen]]\naddress = \"unix:\(path)\"\n".write(toFile: dir + "/backstop.toml", atomically: true, encoding: .utf8)
        let killed = try ServeProcess(config: dir + "/backstop.toml")
        #expect(await killed.waitForLog("backstop started"), "\(killed.log)")
        killed.signal(SIGKILL)
        killed.process.waitUntilExit()
        var info = stat()
        #expect(lstat(path, &info) == 0, "the killed server left its socket file")
        #expect(UnixSocketFile.probe(path) == .nobody)
        let second = try await TestServer.start("[[listen]]\naddress = \"unix:\(path)\"\n")
        #expect(try PolicyClient(endpoint: .unix(path: path)).ask(rcptRequest) == "action=DUNNO")
        await second.stop()
        #expect(lstat(path, &info) != 0, "removed on stop")
    }

    @Test func liveSocketIsNeverTaken() async throws {
        let path = tempDirectory() + "/policy.sock"
        let first = try await TestServer.start("[[listen]]\naddress = \"unix:\(path)\"\n")
        var refusal = ""
        do {
            let second = try await TestServer.start("[[listen]]\naddress = \"unix:\(path)\"\n")
            await second.stop()
        } catch { refusal = "\(error)" }
        #expect(refusal == "unix:\(path) is in use by another server")
        #expect(try PolicyClient(endpoint: .unix(path: path)).ask(rcptRequest) == "action=DUNNO", "the first server still answers")
        await first.stop()
    }

    @Test func secondServeProcessExits71AndLeavesTheFirstAlone() async throws {
        let dir = tempDirectory()
        let path = dir + "/policy.sock"
        try "[[listen]]\naddress = \"unix:\(path)\"\n".write(toFile: dir + "/backstop.toml", atomically: true, encoding: .utf8)
        let first = try ServeProcess(config: dir + "/backstop.toml")
        defer { _ = first.stop() }
        #expect(await first.waitForLog("backstop started"), "\(first.log)")
        // The second must give up by itself; if it does not within 20 s, it took the socket.
        let second = try ServeProcess(config: dir + "/backstop.toml", logName: "second.log")
        var waited = 0
        while second.process.isRunning && waited < 200 { try? await Task.sleep(for: .milliseconds(100)); waited += 1 }
        #expect(!second.process.isRunning, "the second server is still running: \(second.log)")
        #expect(second.stop() == 71)
        #expect(second.log.contains("cannot start: unix:\(path) is in use by another server"), "\(second.log)")
        #expect(try PolicyClient(endpoint: .unix(path: path)).ask(rcptRequest) == "action=DUNNO")
        #expect(first.stop() == 0)
        var info = stat()
        #expect(lstat(path, &info) != 0, "the first server removed its socket on stop")
    }

    // MARK: metrics listener

    func metricsServer(_ metrics: String, server: String = "") async throws -> (TestServer, MetricsEndpoint, Int) {
        let port = freePort()
        let s = try await TestServer.start("[metrics]\nlisten = \"127.0.0.1:\(port)\"\n" + metrics + "\n" + server)
        let endpoint = try await MetricsEndpoint.start(settings: s.config.metrics, registry: PrometheusCollectorRegistry(), server: s.server)
        return (s, endpoint, port)
    }

    @Test func metricsAcceptsOnlyItsAllowList() async throws {
        let (s, endpoint, port) = try await metricsServer("allow = [\"192.0.2.0/24\"]")
        let c = try RawConnection(port: port)
        c.send("GET /ratelimit/status?rule=r&key=k HTTP/1.1\r\nHost: x\r\n\r\n")
        let answer = c.readUntilClosed(seconds: 5)
        #expect(answer.closed && answer.text.isEmpty, "closed without a byte: \(answer.text)")
        await endpoint.stop()
        await s.stop()
    }

    /// An administrator who narrows metrics.allow (after a reset of rate limits from where
    /// it should not come) has it in force from the reload on, not from the next restart.
    @Test func aReloadedAllowListAppliesAtOnce() async throws {
        let (s, endpoint, port) = try await metricsServer("")
        let get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        let before = try RawConnection(port: port)
        before.send(get)
        #expect(before.readUntilClosed(seconds: 5).text.hasPrefix("HTTP/1.1 200"))
        let narrowed = try Configuration.parse("[[listen]]\naddress = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:\(port)\"\nallow = [\"192.0.2.0/24\"]\n", file: "t.toml")
        await s.server.install(PolicyEngine(stages: [:]), config: narrowed)
        let after = try RawConnection(port: port)
        after.send(get)
        let answer = after.readUntilClosed(seconds: 5)
        #expect(answer.closed && answer.text.isEmpty, "closed without a byte: \(answer.text)")
        // What a reload cannot change is named.
        var moved = narrowed
        moved.metrics.listen = "127.0.0.1:1"
        moved.server.threads = 3
        #expect(PolicyServer.restartOnly(s.config, moved) == ["server.threads", "metrics.listen"])
        #expect(PolicyServer.restartOnly(s.config, narrowed).isEmpty)
        await endpoint.stop()
        await s.stop()
    }

    /// Query strings are the scraper's text: "?=" once indexed an empty split and stopped
    /// the whole server. Each odd query gets an answer and the server keeps serving.
    @Test func oddQueryStringsAreAnsweredNotTrapped() async throws {
        let (s, endpoint, port) = try await metricsServer("")
        for query in ["?=", "?a&=", "?==", "?&&", "?rule=&key=", "?%zz=%", "?"] {
            let c = try RawConnection(port: port)
            c.send("GET /ratelimit/status\(query) HTTP/1.0\r\n\r\n")
            let answer = c.readUntilClosed(seconds: 5)
            #expect(answer.text.hasPrefix("HTTP/1.0 "), "\(query): \(answer.text)")
        }
        #expect(HTTPTarget.parse("/ratelimit/status?=x&rule=r%2Bs&k").query == ["": "x", "rule": "r+s", "k": ""])
        let scrape = try RawConnection(port: port)
        scrape.send("GET /metrics?= HTTP/1.0\r\n\r\n")
        #expect(scrape.readUntilClosed(seconds: 5).text.hasPrefix("HTTP/1.0 200"))
        #expect(try s.client().ask(rcptRequest) == "action=DUNNO")
        await endpoint.stop()
        await s.stop()
    }

    @Test func metricsConnectionsAreCappedAndCountTowardMaxConnections() async throws {
        let (s, endpoint, port) = try await metricsServer("max_connections = 3", server: "[server]\nmax_connections = 5\n")
        var held: [RawConnection] = []
        for _ in 0..<3 {
            // Each is admitted and answered (kept alive) before the next connects.
            let c = try RawConnection(port: port)
            c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            let answer = c.read(until: "\r\n\r\n", seconds: 10)
            #expect(answer.text.hasPrefix("HTTP/1.1 200") && !answer.closed, "\(answer)")
            held.append(c)
        }
        let fourth = try RawConnection(port: port)
        fourth.send("GET /metrics HTTP/1.0\r\n\r\n")
        let refused = fourth.readUntilClosed(seconds: 5)
        #expect(refused.closed && refused.text.isEmpty, "the fourth metrics connection is refused: \(refused.text)")
        // Three metrics connections leave two places for policy clients.
        let a = try s.client(), b = try s.client()
        #expect(try a.ask(rcptRequest) == "action=DUNNO")
        #expect(try b.ask(rcptRequest) == "action=DUNNO")
        let third = try s.client()
        #expect(try third.ask(rcptRequest) == nil, "server.max_connections counts the metrics connections")
        held.removeAll()
        // The three closed metrics connections give their places back (a and b stay).
        let end = Date().addingTimeInterval(10)
        while s.server.openConnections > 2 && Date() < end { try await Task.sleep(for: .milliseconds(20)) }
        let scrape = try RawConnection(port: port)
        scrape.send("GET /metrics HTTP/1.0\r\n\r\n")
        #expect(scrape.readUntilClosed(seconds: 5).text.hasPrefix("HTTP/1.0 200"))
        await endpoint.stop()
        await s.stop()
    }

    /// HTTP lets a client send requests ahead, and /metrics is answered at once: one read of
    /// `GET /metrics` × 200 rendered 200 answers in a row on an event loop Postfix shares (and
    /// a client that never read piled them up). At most `maxPipelined` are answered from one
    /// read, then the connection is closed; the server goes on answering Postfix.
    @Test func requestsSentFarAheadToTheMetricsListenerAreCutOff() async throws {
        let (s, endpoint, port) = try await metricsServer("")
        let c = try RawConnection(port: port)
        c.send(String(repeating: "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", count: 200))
        let result = c.readUntilClosed(seconds: 20)
        let answers = result.text.components(separatedBy: "HTTP/1.1 200 OK").count - 1
        #expect(result.closed, "the connection is closed")
        #expect(answers >= 1 && answers <= MetricsHTTPHandler.maxPipelined, "\(answers) answers to 200 requests sent ahead")
        // A few requests ahead, as a client may send, are all answered.
        let few = try RawConnection(port: port)
        few.send(String(repeating: "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", count: 3) + "GET /metrics HTTP/1.0\r\n\r\n")
        let fewResult = few.readUntilClosed(seconds: 10)
        #expect(fewResult.text.components(separatedBy: " 200 OK").count - 1 == 4, "\(fewResult.text.prefix(200))")
        #expect(try s.client().ask(rcptRequest) == "action=DUNNO")
        await endpoint.stop()
        await s.stop()
    }

    /// metrics.read_timeout bounds a request's arrival, not its answer: a rate-limit question
    /// waiting on the store (up to 5 s) was cut off by a short read_timeout, with no answer.
    @Test func aSlowAnswerIsNotCutOffByTheReadTimeout() async throws {
        let port = freePort()
        let s = try await TestServer.start("[metrics]\nlisten = \"127.0.0.1:\(port)\"\nread_timeout = \"200ms\"\n")
        let endpoint = try await MetricsEndpoint.start(settings: s.config.metrics, registry: PrometheusCollectorRegistry(), server: s.server) { _ in
            try await Task.sleep(for: .milliseconds(700))
            return "slow answer"
        }
        let c = try RawConnection(port: port)
        c.send("GET /ratelimit/status?rule=r&key=k HTTP/1.0\r\n\r\n")
        // Read on a thread of its own: the answer comes from a Swift task, and a blocking
        // read on this test's task would hold one of the (two) threads that runs it, while
        // suites running beside this one may hold the other.
        let answer = await withCheckedContinuation { done in
            Thread.detachNewThread { done.resume(returning: c.readUntilClosed(seconds: 10)) }
        }
        #expect(answer.text.hasPrefix("HTTP/1.0 200") && answer.text.hasSuffix("slow answer\n"), "\(answer.text)")
        await endpoint.stop()
        await s.stop()
    }

    /// A request the HTTP decoder cannot read gets 400 and a closed connection, and is
    /// logged (it was answered and closed without a word in the log).
    @Test func aMalformedMetricsRequestIsAnsweredAndLogged() async throws {
        let port = freePort()
        let kept = KeptLines()
        var logger = Logger(label: "test") { _ in kept }
        logger.logLevel = .warning
        let s = try await TestServer.start("[metrics]\nlisten = \"127.0.0.1:\(port)\"\n", logger: logger)
        let endpoint = try await MetricsEndpoint.start(settings: s.config.metrics, registry: PrometheusCollectorRegistry(), server: s.server)
        let c = try RawConnection(port: port)
        c.send("GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Line\u{1B}[2J\r\n\r\n")
        let answer = c.readUntilClosed(seconds: 5)
        #expect(answer.text.hasPrefix("HTTP/1.1 400") && answer.closed, "\(answer.text)")
        let lines = kept.lines.withLockedValue { $0 }
        #expect(lines.contains { $0.hasPrefix("malformed metrics request, closing: peer=127.0.0.1:") }, "\(lines)")
        #expect(!lines.joined().contains("\u{1B}"))
        await endpoint.stop()
        await s.stop()
    }

    @Test func halfSentAndIdleMetricsRequestsAreClosed() async throws {
        let (s, endpoint, port) = try await metricsServer("read_timeout = \"1s\"\nidle_timeout = \"2s\"")
        let started = Date()
        let half = try RawConnection(port: port)
        half.send("GET /metr")
        let idle = try RawConnection(port: port)
        let halfResult = half.readUntilClosed(seconds: 10)
        let halfTime = Date().timeIntervalSince(started)
        let idleResult = idle.readUntilClosed(seconds: 10)
        let idleTime = Date().timeIntervalSince(started)
        #expect(halfResult.closed && halfTime >= 0.9 && halfTime < 1.9, "half-sent request closed at read_timeout: \(halfTime)")
        #expect(idleResult.closed && idleTime >= 1.9 && idleTime < 3.5, "idle connection closed at idle_timeout: \(idleTime)")
        // A kept-alive connection gets its answer, then the idle timeout again.
        let kept = try RawConnection(port: port)
        kept.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        let keptResult = kept.readUntilClosed(seconds: 10)
        #expect(keptResult.text.hasPrefix("HTTP/1.1 200") && keptResult.closed)
        await endpoint.stop()
        await s.stop()
    }

    @Test func nonLoopbackMetricsNeedAnAllowList() throws {
        #expect(throws: ConfigError.self) { try Configuration.parse("[metrics]\nlisten = \"0.0.0.0:9233\"\n", file: "t.toml") }
        do {
            _ = try Configuration.parse("[metrics]\nlisten = \"0.0.0.0:9233\"\n", file: "t.toml")
        } catch {
            #expect(error.description.contains("metrics.listen: 0.0.0.0:9233 is not a loopback address: list the scrapers' networks in metrics.allow"), "\(error)")
        }
        let config = try Configuration.parse("[metrics]\nlisten = \"0.0.0.0:9233\"\nallow = [\"10.0.0.0/8\"]\n", file: "t.toml")
        #expect(config.metrics.allow.contains("10.1.2.3") && !config.metrics.allow.contains("127.0.0.1"))
        #expect(try Configuration.parse("[metrics]\nlisten = \"localhost:9233\"\n", file: "t.toml").metrics.allow.contains("127.0.0.1"))
    }

    // MARK: files that are not regular files

    @Test func devicesFifosAndDirectoriesAreRefusedAtOnce() throws {
        let dir = tempDirectory()
        let fifo = dir + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        for (path, kind) in [("/dev/zero", "a character device"), (fifo, "a FIFO"), (dir, "a directory")] {
            let started = Date()
            #expect(throws: FileReadError(reason: "\(kind), not a regular file", errno: nil)) {
                try RegularFile.read(path, maxBytes: 1 << 20)
            }
            do { _ = try Configuration.load(path: path) } catch {
                #expect(error.description == "\(path): cannot read the configuration: \(kind), not a regular file")
            }
            let table = "[policy]\nrcpt = [\"recipients\"]\n[recipients]\ntables = [\"\(path)\"]\n"
            try table.write(toFile: dir + "/t.toml", atomically: true, encoding: .utf8)
            let check = try runBackstop(["check-config", dir + "/t.toml"])
            #expect(check.status == 1)
            #expect(check.stderr.contains("\(path): cannot read the recipient table: \(kind), not a regular file"), "\(check.stderr)")
            #expect(Date().timeIntervalSince(started) < 5, "refused at once, not read")
        }
        let big = dir + "/big"
        #expect(FileManager.default.createFile(atPath: big, contents: Data(count: 2 << 20)))
        #expect(throws: FileReadError(reason: "larger than 1 MiB, the most Backstop reads from such a file", errno: nil)) {
            try RegularFile.read(big, maxBytes: 1 << 20)
        }
        #expect(try RegularFile.read(big, maxBytes: 2 << 20).count == 2 << 20)
    }
}

/// docs/metrics.md and the help texts the endpoint serves name the same metrics.
@Test func everyDocumentedMetricHasHelpAndEveryHelpIsDocumented() throws {
    let doc = try String(contentsOfFile: packageRoot + "/docs/metrics.md", encoding: .utf8)
    var documented = Set<String>()
    for line in doc.split(separator: "\n") where line.hasPrefix("| `backstop_") {
        let name = String(line.dropFirst(3).prefix { $0 != "`" })
        documented.insert(name)
        // The page says the help line is the meaning given there (without the markup).
        let meaning = line.split(separator: "|").last.map { $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "`", with: "") }
        #expect(MetricsHelp.texts[name] == nil || MetricsHelp.texts[name] == meaning, "\(name): help \"\(MetricsHelp.texts[name] ?? "")\", docs \"\(meaning ?? "")\"")
    }
    #expect(documented == Set(MetricsHelp.texts.keys), "only documented: \(documented.subtracting(MetricsHelp.texts.keys)); only in help: \(Set(MetricsHelp.texts.keys).subtracting(documented))")
}
