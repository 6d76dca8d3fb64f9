// `backstop serve`: loads the configuration, builds the checks, binds the listeners and
// runs until SIGTERM/SIGINT (graceful stop) while SIGHUP reloads. Stays in the foreground,
// as systemd and other supervisors expect.

import ArgumentParser
import BackstopCore
import BackstopServer
import BackstopSPF
import Foundation
import Logging
import NIOConcurrencyHelpers
import Prometheus
import ServiceLifecycle
import UnixSignals

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the policy server.")

    @Option(name: .shortAndLong, help: "Configuration file.")
    var config: String = Configuration.defaultPath

    @Flag(help: "Stay in the foreground (always the case; accepted for systemd unit files).")
    var foreground = false

    func run() throws {
        // SIGHUP is blocked before any thread exists, so every thread inherits the block:
        // one that arrives before the reload source is registered stays pending instead of
        // taking its default action (ending the process), and the source, a signalfd, reads
        // it once registered. Without this, the main thread did not block it, and a HUP sent
        // at start-up could end the server (systemd does not restart a unit a HUP ended).
        var hangup = sigset_t()
        sigemptyset(&hangup)
        sigaddset(&hangup, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &hangup, nil)
        let command = self
        try runBlocking { try await command.serveAsync() }
    }

    func serveAsync() async throws {
        LogOutput.bootstrap()
        // SIGHUP is read from here on (blocked since `run`), not only once the server runs:
        // one that comes while the configuration and tables load waits, and is a reload
        // once the server runs.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        // SPF evaluations run in `backstop spf-worker` processes.
        let workerBinaryNote = SPFProcesses.registerRunningExecutable()
        let logger = Logger(label: "backstop")
        if let workerBinaryNote { logger.warning("\(workerBinaryNote)") }
        let configuration: Configuration
        let engine: PolicyEngine
        var registry: PrometheusCollectorRegistry?
        do {
            configuration = try Configuration.load(path: config)
            LogOutput.shared.configure(configuration.log)
            // Metrics are routed before any check creates its counters.
            if configuration.metrics.listen != nil { registry = MetricsSetup.bootstrap() }
            engine = try EngineBuilder.build(configuration, previous: nil, logger: logger)
            for warning in configuration.warnings { logger.warning("configuration: \(warning.description)") }
        } catch let error as ConfigError {
            for issue in error.issues { logger.critical("cannot start: \(issue.description)") }
            throw ExitStatus.config.code
        }
        let server = PolicyServer(config: configuration, engine: engine, logger: logger)
        engine.putTablesInForce()
        let reloader = ConfigReloader(path: config, server: server, config: configuration, engine: engine, logger: logger)
        // On stop, checks release what they hold (SPF ends its workers) before the event
        // loops go, so that a worker's end is not taken for a fault.
        server.onStop {
            let checks = reloader.engine.checks.values.compactMap { $0 as? any RetirableCheck }
            for check in checks { check.stop() }
            for check in checks { await check.stopped() }
        }
        var metricsEndpoint: MetricsEndpoint?
        defer { _ = metricsEndpoint }
        if let registry, let listen = configuration.metrics.listen {
            do {
                metricsEndpoint = try await MetricsEndpoint.start(settings: configuration.metrics, registry: registry, server: server,
                                                                  status: { question in
                    guard let check = reloader.engine.checks["ratelimit"] as? RateLimitCheck else {
                        throw ServerError("the ratelimit check is not configured")
                    }
                    switch question {
                    case .status(let rule, let key): return try await check.status(rule: rule, key: key)
                    case .list(let rule, let overOnly, let limit): return try await check.list(rule: rule, overOnly: overOnly, limit: limit)
                    case .reset(let rule, let key): return try await check.reset(rule: rule, key: key)
                    }
                })
                logger.info("metrics at http://\(metricsEndpoint!.address)/metrics")
                let endpoint = metricsEndpoint!
                server.onStop { await endpoint.stop() }
            } catch {
                logger.critical("cannot start: metrics listener \(listen): \(error)")
                await server.stop()
                throw ExitStatus.osError.code
            }
        }
        do {
            try await server.start()
        } catch {
            logger.critical("cannot start: \(error)")
            await server.stop()
            throw ExitStatus.osError.code
        }
        let fileLimit = Privileges.raiseFileLimit()
        if fileLimit > 0 && fileLimit < configuration.server.maxConnections + 64 {
            logger.warning("open-file limit \(fileLimit) is below server.max_connections (\(configuration.server.maxConnections)) + 64: raise LimitNOFILE")
        }
        do {
            // Workers must still be able to switch to spf.worker_user once the server is not
            // root: a supervisor that keeps root for that alone is started first.
            // Started whenever root is given up, with or without [spf]: a reload may add it.
            if configuration.server.user != nil {
                try SPFProcesses.startSupervisor(workerUser: SPFSettings.from(configuration).verifier.workerUser)
            }
        } catch {
            // The system refused a process, a socket pair or a thread (EAGAIN, EMFILE): not
            // a permission problem, and a later start may well succeed (systemd restarts 71).
            logger.critical("cannot start: \(error)")
            await server.stop()
            throw ExitStatus.osError.code
        }
        do {
            try Privileges.drop(user: configuration.server.user, group: configuration.server.group, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            await server.stop()
            throw ExitStatus.noPermission.code
        }
        Serve.warnAboutUnreadableFiles([config] + engine.checks.values.flatMap { ($0 as? any ReloadableCheck)?.files ?? [] },
                                       user: configuration.server.user, logger: logger)
        if configuration.log.summaryInterval > .zero {
            let summary = SummaryLog(server: server, interval: configuration.log.summaryInterval)
            server.onStop { summary.stop() }
        }
        logger.notice("backstop started: config=\(config) listeners=\(server.boundAddresses.joined(separator: ",")) event_loops=\(server.eventLoopCount)")
        SystemdNotify.send("READY=1\nSTATUS=answering on \(server.boundAddresses.joined(separator: ", "))")
        server.onStop { SystemdNotify.send("STOPPING=1") }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server), .init(service: SignalReload(reloader: reloader, hangups: hangups))],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "backstop.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })
            ))
        // A supervisor that ends cannot be started again by a server that gave up root, and
        // without it no SPF worker can be replaced: stop, with a status systemd restarts on.
        let supervisorLost = NIOLockedValueBox(false)
        SPFProcesses.onSupervisorExit { why in
            // While the server stops, the supervisor may go first (SIGKILL to the service):
            // nothing more is started then, so its end is no fault.
            guard !server.isStopping else { return }
            // Without [spf] nothing needs it now; only a reload that adds [spf] would.
            guard reloader.engine.checks["spf"] != nil else {
                logger.error("the SPF supervisor \(why); SPF added by a reload cannot start workers until backstop is restarted")
                return
            }
            logger.critical("the SPF supervisor \(why); no SPF worker can be started without it, so backstop stops (exit status \(ExitStatus.osError.rawValue)) to be restarted")
            supervisorLost.withLockedValue { $0 = true }
            Task { await group.triggerGracefulShutdown() }
        }
        try await group.run()
        logger.notice("backstop stopped")
        if supervisorLost.withLockedValue({ $0 }) { throw ExitStatus.osError.code }
    }
}

extension Serve {
    /// Everything was read as root at start; each edit and reload reads again as
    /// server.user. A file only root can read (a table written with a 0600 temp file and
    /// renamed into place) would load now and fail at its first edit: say so now.
    static func warnAboutUnreadableFiles(_ files: [String], user: String?, logger: Logger) {
        guard let user, getuid() != 0 else { return }
        for file in Set(files).sorted() where access(file, R_OK) != 0 {
            let why = String(cString: strerror(errno))
            logger.warning("\(file) cannot be read as \(user) (\(why)): it loaded as root, but its next edit or a reload will fail; make it readable by server.user")
        }
    }
}

/// Reloads on every SIGHUP until shutdown.
struct SignalReload: Service {
    let reloader: ConfigReloader
    /// Trapped since the start of `serve` (see serveAsync).
    let hangups: UnixSignalsSequence

    func run() async throws {
        await withGracefulShutdownHandler {
            for await _ in hangups.cancelOnGracefulShutdown() {
                SystemdNotify.reloading()
                await reloader.reload()
                SystemdNotify.send("READY=1")
            }
        } onGracefulShutdown: {}
    }
}
