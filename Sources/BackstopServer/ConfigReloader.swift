// Re-reads the configuration file on SIGHUP and installs the new engine when, and only
// when, the whole file and every table it names are valid. A broken edit is logged with
// file:line and the running configuration stays in force.

import BackstopCore
import Logging
import NIOConcurrencyHelpers

public final class ConfigReloader: Sendable {
    let path: String
    let server: PolicyServer
    let logger: Logger
    private let current: NIOLockedValueBox<(Configuration, PolicyEngine)>

    public init(path: String, server: PolicyServer, config: Configuration, engine: PolicyEngine, logger: Logger) {
        self.path = path
        self.server = server
        self.logger = logger
        self.current = NIOLockedValueBox((config, engine))
    }

    public var engine: PolicyEngine { current.withLockedValue { $0.1 } }

    /// Returns true when the new configuration is in force.
    @discardableResult
    public func reload() async -> Bool {
        let previous = current.withLockedValue { $0.1 }
        do {
            let config = try Configuration.load(path: path)
            // Checks that read the log level as they are built (SPF's per-outcome debug
            // lines) are given the new one; the new log settings come into force only once
            // the engine is built, so what a failed reload logs goes where it always did.
            let engine = try EngineBuilder.build(config, previous: previous, logger: logger)
            LogOutput.shared.configure(config.log)
            for warning in config.warnings { logger.warning("configuration: \(warning.description)") }
            // Tables are re-read too; one whose newest edit is broken keeps its last good
            // version, and the reload is then not a success, whatever the file says.
            var tableIssues: [ConfigIssue] = []
            for check in engine.checks.values {
                tableIssues += (check as? any ReloadableCheck)?.reload() ?? []
            }
            current.withLockedValue { $0 = (config, engine) }
            await server.install(engine, config: config)
            engine.putTablesInForce()
            // What the old engine held and the new one does not take over is released.
            for (name, check) in previous.checks {
                (check as? any RetirableCheck)?.retire(replacedBy: engine.checks[name])
            }
            if !tableIssues.isEmpty {
                server.metrics.configReloadFailures.increment()
                for issue in tableIssues {
                    logger.error("configuration reloaded from \(path), but a table keeps its last good version: \(issue.description)")
                }
                return false
            }
            server.metrics.configReloads.increment()
            logger.notice("configuration reloaded from \(path)")
            return true
        } catch let error as ConfigError {
            server.metrics.configReloadFailures.increment()
            for issue in error.issues {
                logger.error("reload failed, keeping the running configuration: \(issue.description)")
            }
        } catch {
            server.metrics.configReloadFailures.increment()
            logger.error("reload failed, keeping the running configuration: \(error)")
        }
        return false
    }
}
