// What all connections of one server share: settings, the per-loop engines, the count of
// open connections and the registry used to drain them on shutdown. Touched on connect
// and disconnect, never per request.

import BackstopCore
import Logging
import NIOCore
import NIOConcurrencyHelpers
import Synchronization

final class ServerState: Sendable {
    let logger: Logger
    let limits: NIOLockedValueBox<ProtocolLimits>
    let settings: NIOLockedValueBox<ServerSettings>
    let engines: [ObjectIdentifier: LoopEngine]
    let openConnections = Atomic<Int>(0)
    let generation = Atomic<Int>(1)
    let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    let draining = Atomic<Bool>(false)
    let metrics: ServerMetrics

    init(logger: Logger, config: Configuration, engine: PolicyEngine, group: any EventLoopGroup, metrics: ServerMetrics) {
        self.logger = logger
        self.limits = NIOLockedValueBox(config.limits)
        self.settings = NIOLockedValueBox(config.server)
        var engines: [ObjectIdentifier: LoopEngine] = [:]
        for loop in group.makeIterator() {
            engines[ObjectIdentifier(loop)] = LoopEngine(eventLoop: loop, engine: engine, generation: 1)
        }
        self.engines = engines
        self.metrics = metrics
    }

    func engine(for loop: any EventLoop) -> LoopEngine? { engines[ObjectIdentifier(loop)] }

    func install(_ engine: PolicyEngine, config: Configuration) -> Int {
        let next = generation.add(1, ordering: .relaxed).newValue
        limits.withLockedValue { $0 = config.limits }
        settings.withLockedValue { $0 = config.server }
        for loopEngine in engines.values { loopEngine.replace(with: engine, generation: next) }
        return next
    }
}
