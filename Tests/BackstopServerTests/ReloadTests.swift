// Reloading the configuration: a good file takes effect on open connections, a broken one
// is refused and the running configuration stays in force.

import Testing
import Foundation
import Logging
import NIOConcurrencyHelpers
@testable import BackstopCore
@testable import BackstopServer
@testable import BackstopSPF

@Suite(.serialized) struct ReloadTests {
    @Test func goodReloadTakesEffectAndBadReloadKeepsTheOld() async throws {
        let dir = tempDirectory()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:0\"\n[policy]\ntest_mode = false\n".write(toFile: path, atomically: true, encoding: .utf8)
        let config = try Configuration.load(path: path)
        let engine = PolicyEngine(stages: [.rcpt: [RecipientPrefixCheck()]])
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        let reloader = ConfigReloader(path: path, server: server, config: config, engine: engine, logger: testLogger)
        let c = try PolicyClient(endpoint: ListenerSettings.parseEndpoint(server.boundAddresses[0])!)
        var request = rcptRequest
        request[4] = ("recipient", "bad@x")
        #expect(try c.ask(request) == "action=550 5.1.1 no")

        // Broken edit: refused, old engine stays.
        try "[[listen]]\naddress = \"127.0.0.1:0\"\n[policy]\ntest_mode = maybe\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await reloader.reload() == false)
        #expect(try c.ask(request) == "action=550 5.1.1 no")

        // Good edit: the new engine (no checks configured) answers on the same connection.
        try "[[listen]]\naddress = \"127.0.0.1:0\"\n[policy]\ntest_mode = true\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await reloader.reload() == true)
        // No pause: reload() returns once every event loop decides with the new engine.
        #expect(try c.ask(request) == "action=DUNNO")
        #expect(reloader.engine.testMode)
        await server.stop()
    }

    /// Checks read the log level as they are built (SPF decides once whether it logs each
    /// outcome): a reload to log.level = "debug" built them before it set the level, and
    /// SPF's outcome lines came only with the next reload.
    @Test func aReloadToDebugTurnsSPFOutcomeLinesOnAtOnce() async throws {
        SPFSettings.register()
        let path = tempDirectory() + "/backstop.toml"
        func write(_ level: String) throws {
            try "[[listen]]\naddress = \"127.0.0.1:0\"\n[policy]\nrcpt = [\"spf\"]\n[spf]\nresolvers = [\"127.0.0.1:9\"]\n[log]\nlevel = \"\(level)\"\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
        }
        try write("info")
        let config = try Configuration.load(path: path)
        LogOutput.shared.configure(config.log)
        defer { LogOutput.shared.configure(LogSettings()) }
        // The server's own loggers: their level is the log output's.
        let logger = Logger(label: "backstop") { KeyValueLogHandler(label: $0, output: .shared) }
        let engine = try EngineBuilder.build(config, previous: nil, logger: logger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        let reloader = ConfigReloader(path: path, server: server, config: config, engine: engine, logger: logger)
        #expect((engine.checks["spf"] as? SPFCheck)?.logsOutcomes == false)
        try write("debug")
        #expect(await reloader.reload())
        #expect((reloader.engine.checks["spf"] as? SPFCheck)?.logsOutcomes == true, "debug from this reload on")
        for check in reloader.engine.checks.values { (check as? any RetirableCheck)?.stop() }
        await server.stop()
    }

    /// A reload whose engine cannot be built never logs with its log settings: they were
    /// put in force for the build and taken back after it failed, so what the build logged
    /// (a table's load, at debug) went out under a configuration that never came into force.
    @Test func aFailedReloadNeverLogsWithItsLogSettings() async throws {
        CheckCatalog.register(CheckKind(name: "probe") { _, _ in LevelProbe() })
        let path = tempDirectory() + "/backstop.toml"
        func write(_ level: String, checks: String) throws {
            try "[[listen]]\naddress = \"127.0.0.1:0\"\n[policy]\nrcpt = [\(checks)]\n[log]\nlevel = \"\(level)\"\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
        }
        try write("warning", checks: "")
        let config = try Configuration.load(path: path)
        LogOutput.shared.configure(config.log)
        defer { LogOutput.shared.configure(LogSettings()) }
        let engine = try EngineBuilder.build(config, previous: nil, logger: testLogger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        let reloader = ConfigReloader(path: path, server: server, config: config, engine: engine, logger: testLogger)
        try write("debug", checks: "\"probe\"")
        #expect(await reloader.reload() == false)
        #expect(LevelProbe.seen.withLockedValue { $0 } == [.warning], "the log level while the failed engine was built")
        #expect(LogOutput.shared.level == .warning)
        await server.stop()
    }

    @Test func aBrokenTableEditMakesTheReloadFail() async throws {
        let dir = tempDirectory()
        let path = dir + "/backstop.toml"
        try "alice@example.com OK\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        try "[[listen]]\naddress = \"127.0.0.1:0\"\n[policy]\nrcpt = [\"recipients\"]\n[recipients]\nreload_interval = \"0s\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let config = try Configuration.load(path: path)
        let engine = try EngineBuilder.build(config, previous: nil, logger: testLogger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        let reloader = ConfigReloader(path: path, server: server, config: config, engine: engine, logger: testLogger)
        try "alice@example.com OK\nbob@example.com OK\nno at sign\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        #expect(await reloader.reload() == false, "the configuration is fine, the table is not: not a success")
        let c = try PolicyClient(endpoint: ListenerSettings.parseEndpoint(server.boundAddresses[0])!)
        var request = rcptRequest
        request[4] = ("recipient", "bob@example.com")
        #expect(try c.ask(request) == "action=450 4.1.1 Recipient not known yet: the recipient table is being corrected, try again later")
        try "alice@example.com OK\nbob@example.com OK\n".write(toFile: dir + "/recipients", atomically: true, encoding: .utf8)
        #expect(await reloader.reload() == true)
        #expect(try c.ask(request) == "action=DUNNO")
        await server.stop()
    }
}

/// A check whose build records the log level in force and fails.
private struct LevelProbe: CheckSettings {
    static let seen = NIOLockedValueBox<[Logger.Level]>([])

    func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        LevelProbe.seen.withLockedValue { $0.append(LogOutput.shared.level) }
        throw ConfigError(issues: [ConfigIssue(file: "probe", line: nil, key: "probe", message: "never builds")])
    }
}
