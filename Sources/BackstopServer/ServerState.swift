// What all connections of one server share: settings, the per-loop engines and the count
// of open connections (policy and metrics alike, against server.max_connections).
// Touched on connect and disconnect, never per request.

import BackstopCore
import Logging
import NIOCore
import NIOConcurrencyHelpers
import Synchronization

final class ServerState: Sendable {
    let logger: Logger
    let limits: NIOLockedValueBox<ProtocolLimits>
    let settings: NIOLockedValueBox<ServerSettings>
    /// [metrics] as last installed: who may connect, how many, their timeouts (the listener
    /// itself, metrics.listen, is bound once).
    let metricsSettings: NIOLockedValueBox<MetricsSettings>
    let engines: [ObjectIdentifier: LoopEngine]
    /// Connections open, policy and metrics together (backstop_connections_open).
    let openConnections: GaugedCount
    let generation = Atomic<Int>(1)
    let metrics: ServerMetrics
    let warnings = ServerWarnings()

    init(logger: Logger, config: Configuration, engine: PolicyEngine, group: any EventLoopGroup, metrics: ServerMetrics) {
        self.logger = logger
        self.limits = NIOLockedValueBox(config.limits)
        self.settings = NIOLockedValueBox(config.server)
        self.metricsSettings = NIOLockedValueBox(config.metrics)
        var engines: [ObjectIdentifier: LoopEngine] = [:]
        for loop in group.makeIterator() {
            engines[ObjectIdentifier(loop)] = LoopEngine(eventLoop: loop, engine: engine, generation: 1, decisions: config.log.decisions)
        }
        self.engines = engines
        self.metrics = metrics
        self.openConnections = GaugedCount(metrics.connectionsOpen)
    }

    func engine(for loop: any EventLoop) -> LoopEngine? { engines[ObjectIdentifier(loop)] }

    var currentLimits: ProtocolLimits { limits.withLockedValue { $0 } }

    /// Takes one place in server.max_connections; false (counted and logged) when none is left.
    func takeConnection(peer: String) -> Bool {
        let maxConnections = settings.withLockedValue { $0.maxConnections }
        let open = openConnections.add(1)
        if open > maxConnections {
            openConnections.add(-1)
            metrics.connectionsLimited.increment()
            warnings.warn(.refusedAtMaxConnections, logger, "connection refused: server.max_connections (\(maxConnections)) reached: peer=\(LogEscaping.field(peer))")
            return false
        }
        metrics.connectionsAccepted.increment()
        return true
    }

    /// Gives back a place taken by `takeConnection`.
    func releaseConnection() {
        openConnections.add(-1)
    }

    /// The new generation, and a future per loop that succeeds once that loop has it.
    func install(_ engine: PolicyEngine, config: Configuration) -> (Int, [EventLoopFuture<Void>]) {
        let next = generation.add(1, ordering: .relaxed).newValue
        limits.withLockedValue { $0 = config.limits }
        settings.withLockedValue { $0 = config.server }
        metricsSettings.withLockedValue { $0 = config.metrics }
        let installed = engines.values.map { $0.replace(with: engine, generation: next, decisions: config.log.decisions) }
        return (next, installed)
    }
}
