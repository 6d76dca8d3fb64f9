// Starts a real server on a loopback port (or a Unix socket in a temp dir) for a test, with
// checks the test chooses, and stops it afterwards.

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
@testable import BackstopCore
@testable import BackstopServer

struct TestServer {
    let server: PolicyServer
    let config: Configuration

    static func start(_ toml: String = "", stages: [ProtocolState: [any Check]] = [:],
                      deadline: TimeAmount = .seconds(10), logger: Logger = testLogger) async throws -> TestServer {
        var text = toml
        if !text.contains("[[listen]]") { text = "[[listen]]\naddress = \"127.0.0.1:0\"\n" + text }
        let config = try Configuration.parse(text, file: "test.toml")
        let engine = PolicyEngine(stages: stages, deadline: deadline)
        let server = PolicyServer(config: config, engine: engine, logger: logger)
        try await server.start()
        return TestServer(server: server, config: config)
    }

    var endpoint: ListenerSettings.Endpoint {
        ListenerSettings.parseEndpoint(server.boundAddresses[0])!
    }

    func client() throws -> PolicyClient { try PolicyClient(endpoint: endpoint, timeoutSeconds: 10) }

    func stop() async { await server.stop() }
}

func tempDirectory() -> String {
    let path = NSTemporaryDirectory() + "backstop-test-" + UUID().uuidString.prefix(8)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

let rcptRequest: [(String, String)] = [
    ("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", "192.0.2.1"),
    ("sender", "a@example.org"), ("recipient", "b@example.com"), ("instance", "1.2.3"),
]

/// Answers REJECT for recipients starting with "bad", else no opinion.
final class RecipientPrefixCheck: Check {
    let name = "prefix"
    let testMode = false
    let failVerdict = Verdict.noOpinion()
    func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        request.recipient.hasPrefix("bad") ? .now(Verdict(.reply(code: 550, enhanced: "5.1.1", text: "no"), reason: "bad")) : .now(.noOpinion())
    }
}

/// Answers OK after a delay, on the event loop.
final class DelayCheck: Check {
    let name = "delay"
    let testMode = false
    let failVerdict = Verdict(.deferIfPermit("4.4.3 timed out"), reason: "timeout")
    let delay: TimeAmount
    /// How many requests it has been asked about: the server has read them.
    let asked = NIOLockedValueBox(0)
    init(delay: TimeAmount) { self.delay = delay }
    func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        asked.withLockedValue { $0 += 1 }
        return .later(context.eventLoop.scheduleTask(in: delay) { Verdict(.ok, reason: "slow ok") }.futureResult)
    }

    /// Waits (up to 10 s) until `count` requests are under way, and says whether they are.
    func waitUntilAsked(_ count: Int) async -> Bool {
        let end = NIODeadline.now() + .seconds(10)
        while asked.withLockedValue({ $0 }) < count && NIODeadline.now() < end { try? await Task.sleep(for: .milliseconds(5)) }
        return asked.withLockedValue { $0 } >= count
    }
}

/// A log handler that keeps the text of every line.
struct KeptLines: LogHandler {
    let lines = NIOLockedValueBox<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { lines.withLockedValue { $0.append(event.message.description) } }
}

let testLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = .warning
    return logger
}()
