// Binds the configured listeners (TCP and Unix), admits connections (allow-list, connection
// limit), and on graceful stop closes the listeners, lets connections answer what is in
// flight, then closes them. Reload swaps the engine on every loop; listeners need a restart.

import BackstopCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

public final class PolicyServer: Service, @unchecked Sendable {
    public let group: any EventLoopGroup
    let state: ServerState
    let logger: Logger
    private let listeners: [ListenerSettings]
    private var channels: [any Channel] = []
    public private(set) var boundAddresses: [String] = []
    private let ownsGroup: Bool
    private let shutdownGrace: TimeAmount
    private var stopHooks: [@Sendable () async -> Void] = []

    /// Runs `hook` during stop, before the event loops shut down (e.g. the metrics listener).
    public func onStop(_ hook: @escaping @Sendable () async -> Void) { stopHooks.append(hook) }

    public init(config: Configuration, engine: PolicyEngine, logger: Logger,
                group: (any EventLoopGroup)? = nil, metrics: ServerMetrics = ServerMetrics()) {
        let threads = config.server.threads == 0 ? System.coreCount : config.server.threads
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.ownsGroup = group == nil
        self.logger = logger
        self.listeners = config.listeners
        self.shutdownGrace = config.server.shutdownGrace
        self.state = ServerState(logger: logger, config: config, engine: engine, group: self.group, metrics: metrics)
        metrics.configGeneration.record(1)
    }

    public var metrics: ServerMetrics { state.metrics }

    /// Binds every listener. Throws (and binds nothing more) when one cannot be bound.
    public func start() async throws {
        for listener in listeners {
            let channel = try await bind(listener)
            channels.append(channel)
            let shown: String
            switch listener.endpoint {
            case .unix(let path): shown = "unix:" + path
            case .tcp: shown = channel.localAddress.map(Self.describe) ?? "?"
            }
            boundAddresses.append(shown)
            logger.info("listening on \(shown)")
        }
    }

    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4: "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .v6: "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        case .unixDomainSocket: "unix:\(address.pathname ?? "?")"
        }
    }

    private func bind(_ listener: ListenerSettings) async throws -> any Channel {
        let state = self.state
        let allow = listener.allow
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: true)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 8 * 1024, high: 64 * 1024))
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { channel in
                PolicyServer.admit(channel, state: state, allow: allow)
            }
        switch listener.endpoint {
        case .tcp(let host, let port):
            return try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            try removeStaleSocket(path)
            let channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            try applyOwnership(path: path, listener: listener)
            return channel
        }
    }

    /// Refuses a socket file that is not a socket, so a typo never deletes a real file.
    private func removeStaleSocket(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if info.st_mode & S_IFMT != S_IFSOCK {
            throw ServerError("\(path) exists and is not a socket: remove it or choose another path")
        }
    }

    private func applyOwnership(path: String, listener: ListenerSettings) throws {
        guard chmod(path, mode_t(listener.mode)) == 0 else {
            throw ServerError("cannot set mode \(String(listener.mode, radix: 8)) on \(path): \(String(cString: strerror(errno)))")
        }
        var uid: uid_t = UInt32.max, gid: gid_t = UInt32.max
        if let owner = listener.owner {
            guard let pw = getpwnam(owner) else { throw ServerError("unknown user \"\(owner)\" for \(path)") }
            uid = pw.pointee.pw_uid
        }
        if let group = listener.group {
            guard let gr = getgrnam(group) else { throw ServerError("unknown group \"\(group)\" for \(path)") }
            gid = gr.pointee.gr_gid
        }
        if listener.owner != nil || listener.group != nil, chown(path, uid, gid) != 0 {
            throw ServerError("cannot change owner of \(path): \(String(cString: strerror(errno)))")
        }
    }

    private static func admit(_ channel: any Channel, state: ServerState, allow: NetworkList) -> EventLoopFuture<Void> {
        let peer = channel.remoteAddress.map(describe) ?? "unix"
        if !allow.isEmpty {
            let address = channel.remoteAddress?.ipAddress.flatMap(IPAddress.init)
            if address == nil || !allow.contains(address!) {
                state.metrics.connectionsRefused.increment()
                state.logger.warning("connection refused: client not in the listener's allow list: peer=\(LogEscaping.field(peer))")
                return channel.close()
            }
        }
        if state.draining.load(ordering: .relaxed) {
            state.logger.debug("connection closed: server is stopping: peer=\(LogEscaping.field(peer))")
            return channel.close()
        }
        let maxConnections = state.settings.withLockedValue { $0.maxConnections }
        let open = state.openConnections.add(1, ordering: .relaxed).newValue
        if open > maxConnections {
            state.openConnections.subtract(1, ordering: .relaxed)
            state.metrics.connectionsLimited.increment()
            state.logger.warning("connection refused: server.max_connections (\(maxConnections)) reached: peer=\(LogEscaping.field(peer))")
            return channel.close()
        }
        state.metrics.connectionsAccepted.increment()
        state.metrics.connectionsOpen.record(open)
        let id = ObjectIdentifier(channel)
        state.connections.withLockedValue { $0[id] = channel }
        channel.closeFuture.whenComplete { _ in
            let now = state.openConnections.subtract(1, ordering: .relaxed).newValue
            state.metrics.connectionsOpen.record(now)
            state.connections.withLockedValue { _ = $0.removeValue(forKey: id) }
        }
        guard let loopEngine = state.engine(for: channel.eventLoop) else {
            state.logger.error("internal error: no engine for this event loop; closing: peer=\(LogEscaping.field(peer))")
            return channel.close()
        }
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
                PolicyConnectionHandler(state: state, loopEngine: loopEngine, peer: peer))
        }
    }

    /// Installs a new engine built from `config` on every loop.
    public func install(_ engine: PolicyEngine, config: Configuration) {
        let generation = state.install(engine, config: config)
        state.metrics.configGeneration.record(generation)
        state.metrics.configReloads.increment()
        if config.listeners != listeners {
            logger.warning("listener changes take effect after a restart; the old listeners stay in use")
        }
    }

    public var openConnections: Int { state.openConnections.load(ordering: .relaxed) }

    /// Stops accepting, lets connections answer what is in flight (up to the grace period),
    /// then closes everything.
    public func stop() async {
        state.draining.store(true, ordering: .relaxed)
        for channel in channels { try? await channel.close() }
        let open = state.connections.withLockedValue { Array($0.values) }
        for channel in open { channel.pipeline.fireUserInboundEventTriggered(DrainEvent()) }
        let deadline = NIODeadline.now() + shutdownGrace
        while state.openConnections.load(ordering: .relaxed) > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        let left = state.connections.withLockedValue { Array($0.values) }
        if !left.isEmpty { logger.warning("closing \(left.count) connections still busy after shutdown_grace") }
        for channel in left { try? await channel.close() }
        for listener in listeners {
            if case .unix(let path) = listener.endpoint { unlink(path) }
        }
        for hook in stopHooks { await hook() }
        stopHooks = []
        if ownsGroup { try? await group.shutdownGracefully() }
    }

    /// Service: bind, run until graceful shutdown is requested, then drain.
    public func run() async throws {
        if channels.isEmpty { try await start() }
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                try? await Task.sleep(nanoseconds: 200_000_000)
            }
        } onGracefulShutdown: {
            self.logger.info("graceful stop: answering requests in flight, then closing")
        }
        await stop()
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
