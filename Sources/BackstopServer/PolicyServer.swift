// Binds the configured listeners (TCP and Unix), admits connections (allow-list, connection
// limit), and stops gracefully: each listener's ServerQuiescingHelper closes it and tells
// every connection to finish (answer what is in flight, then close, within shutdown_grace);
// stop returns when the last connection has closed. Reload swaps the engine on every loop;
// listeners (and the few other settings `restartOnly` names) need a restart. It decides
// nothing about requests.

import BackstopCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

public final class PolicyServer: Service, Sendable {
    public let group: any EventLoopGroup
    let state: ServerState
    let logger: Logger
    /// The configuration it started with: its listeners, and what a reload cannot change.
    private let started: Configuration
    private var listeners: [ListenerSettings] { started.listeners }
    private let ownsGroup: Bool
    /// The event loops it answers on (server.threads, or one per two cores).
    public let eventLoopCount: Int

    /// What binding and stopping change, behind one lock (touched at start and stop only).
    private struct Running {
        var listening: [(channel: any Channel, quiescing: ServerQuiescingHelper)] = []
        var boundAddresses: [String] = []
        /// Socket files this server created, with the device and inode they had then.
        var socketFiles: [(path: String, device: UInt64, inode: UInt64)] = []
        var stopHooks: [@Sendable () async -> Void] = []
        var stopped = false
    }
    private let running = NIOLockedValueBox(Running())

    /// True from the moment a stop begins.
    public var isStopping: Bool { running.withLockedValue { $0.stopped } }

    /// Runs `hook` during stop, before the event loops shut down (e.g. the metrics listener).
    public func onStop(_ hook: @escaping @Sendable () async -> Void) {
        running.withLockedValue { $0.stopHooks.append(hook) }
    }

    public init(config: Configuration, engine: PolicyEngine, logger: Logger,
                group: (any EventLoopGroup)? = nil, metrics: ServerMetrics = ServerMetrics()) {
        let threads = ServerSettings.eventLoops(threads: config.server.threads, cores: System.coreCount)
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.eventLoopCount = group == nil ? threads : Array(self.group.makeIterator()).count
        self.ownsGroup = group == nil
        self.logger = logger
        self.started = config
        self.state = ServerState(logger: logger, config: config, engine: engine, group: self.group, metrics: metrics)
        metrics.configGeneration.record(1)
    }

    public var metrics: ServerMetrics { state.metrics }

    /// "127.0.0.1:10033", "[::1]:10033" or "unix:/path" for each bound listener, in order.
    public var boundAddresses: [String] { running.withLockedValue { $0.boundAddresses } }

    /// Binds every listener. Throws (and binds nothing more) when one cannot be bound.
    public func start() async throws {
        for listener in listeners {
            let quiescing = ServerQuiescingHelper(group: group)
            let channel = try await bind(listener, quiescing: quiescing)
            let shown: String
            switch listener.endpoint {
            case .unix(let path): shown = "unix:" + path
            case .tcp: shown = channel.localAddress.map(Self.describe) ?? "?"
            }
            running.withLockedValue {
                $0.listening.append((channel, quiescing))
                $0.boundAddresses.append(shown)
            }
            logger.info("listening on \(shown)\(listener.protocol == .socketmap ? " (socketmap)" : "")")
        }
    }

    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4: "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .v6: "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        case .unixDomainSocket: "unix:\(address.pathname ?? "?")"
        }
    }

    private func bind(_ listener: ListenerSettings, quiescing: ServerQuiescingHelper) async throws -> any Channel {
        let state = self.state
        let allow = listener.allow
        let served = listener.protocol
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: true)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 8 * 1024, high: 64 * 1024))
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { channel in
                PolicyServer.admit(channel, state: state, allow: allow, protocol: served)
            }
        switch listener.endpoint {
        case .tcp(let host, let port):
            do {
                return try await bootstrap.bind(host: host, port: port).get()
            } catch let error as IOError {
                let shown = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
                throw ServerError("cannot listen on \(shown): \(String(cString: strerror(error.errnoCode)))", errno: error.errnoCode)
            }
        case .unix(let path):
            try UnixSocketFile.claim(path)
            let channel: any Channel
            do {
                channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
            } catch let error as IOError {
                throw ServerError("cannot listen on unix:\(path): \(String(cString: strerror(error.errnoCode)))", errno: error.errnoCode)
            }
            if let identity = UnixSocketFile.identity(path) {
                running.withLockedValue { $0.socketFiles.append((path, identity.device, identity.inode)) }
            }
            try UnixSocketFile.applyOwnership(path: path, mode: listener.mode, owner: listener.owner, group: listener.group)
            return channel
        }
    }

    private static func admit(_ channel: any Channel, state: ServerState, allow: NetworkList,
                              protocol served: ListenerSettings.ServedProtocol) -> EventLoopFuture<Void> {
        let peer = channel.remoteAddress.map(describe) ?? "unix"
        if !allow.isEmpty {
            let address = channel.remoteAddress?.ipAddress.flatMap(IPAddress.init)
            if address == nil || !allow.contains(address!) {
                state.metrics.connectionsRefused.increment()
                state.warnings.warn(.refusedByAllow, state.logger, "connection refused: client not in the listener's allow list: peer=\(LogEscaping.field(peer))")
                return channel.close()
            }
        }
        guard state.takeConnection(peer: peer) else { return channel.close() }
        channel.closeFuture.whenComplete { _ in state.releaseConnection() }
        guard let loopEngine = state.engine(for: channel.eventLoop) else {
            state.logger.error("internal error: no engine for this event loop; closing: peer=\(LogEscaping.field(peer))")
            return channel.close()
        }
        return channel.eventLoop.makeCompletedFuture {
            let pipeline = channel.pipeline.syncOperations
            switch served {
            case .policy:
                try pipeline.addHandler(ConnectionHandler(state: state, decoder: FrameDecoder(RequestParser(limits: state.currentLimits)),
                                                          responder: .policy(PolicyResponder(state: state, loopEngine: loopEngine)), peer: peer))
            case .socketmap:
                try pipeline.addHandler(ConnectionHandler(state: state, decoder: FrameDecoder(SocketmapParser()),
                                                          responder: .socketmap(SocketmapResponder(state: state, loopEngine: loopEngine, peer: peer)), peer: peer))
            }
        }
    }

    /// Installs a new engine built from `config` on every loop. It returns once every loop
    /// decides with the new engine, so the "configuration reloaded" line that follows is true
    /// for the next request on any connection. It waits without blocking a thread.
    public func install(_ engine: PolicyEngine, config: Configuration) async {
        let (generation, installed) = state.install(engine, config: config)
        if let loop = installed.first?.eventLoop {
            try? await EventLoopFuture.andAllComplete(installed, on: loop).get()
        }
        state.metrics.configGeneration.record(generation)
        let waiting = PolicyServer.restartOnly(started, config)
        if !waiting.isEmpty {
            logger.warning("\(waiting.joined(separator: ", ")) changed: taken at start only, so the running values stay in use until a restart")
        }
    }

    /// The settings a reload changed that are read once, at start.
    static func restartOnly(_ old: Configuration, _ new: Configuration) -> [String] {
        var changed: [String] = []
        if old.listeners != new.listeners { changed.append("[[listen]]") }
        if old.server.threads != new.server.threads { changed.append("server.threads") }
        if old.server.user != new.server.user { changed.append("server.user") }
        if old.server.group != new.server.group { changed.append("server.group") }
        if old.metrics.listen != new.metrics.listen { changed.append("metrics.listen") }
        if old.log.summaryInterval != new.log.summaryInterval { changed.append("log.summary_interval") }
        return changed
    }

    public var openConnections: Int { state.openConnections.value }

    /// Stops accepting, lets connections answer what is in flight (each closes by itself
    /// within shutdown_grace), waits until the last has closed, then releases the rest.
    /// A second call returns at once.
    public func stop() async {
        // The helpers leave `running` here: each touches its event loop when released, so
        // they must go while the loops still run.
        let (listening, hooks, first) = running.withLockedValue { r in
            defer { r.stopped = true; r.stopHooks = []; r.listening = [] }
            return (r.listening, r.stopHooks, !r.stopped)
        }
        guard first else { return }
        // Every listener stops accepting at once, then the drains are awaited together: one
        // after another, the later listeners would accept until the earlier had drained, and
        // the stop would take up to shutdown_grace per listener.
        let drains = listening.map { _, quiescing in
            let done = group.next().makePromise(of: Void.self)
            quiescing.initiateShutdown(promise: done)
            return done.futureResult
        }
        for (index, (channel, _)) in listening.enumerated() {
            try? await drains[index].get()
            try? await channel.closeFuture.get()  // the listening socket's own close, too
        }
        _ = consume listening
        removeSocketFiles()
        for hook in hooks { await hook() }
        if ownsGroup {
            // A listener that failed to bind leaves its quiescing helper in NIO's closures,
            // released by whichever loop ran the bind, and the helper's deinit completes a
            // promise on another loop. One empty task on every loop lets those releases finish
            // while every loop still runs (otherwise SWIFTNIO_STRICT crashes the exit).
            for loop in group.makeIterator() { try? await loop.submit {}.get() }
            try? await group.shutdownGracefully()
        }
    }

    /// Removes the socket files this server bound, each only if it is still the one bound (a
    /// later server's socket at the same path is left alone). After the privilege drop the
    /// directory may not be writable: then the file stays, and the next start removes it as
    /// stale because nobody answers there.
    private func removeSocketFiles() {
        for file in running.withLockedValue({ $0.socketFiles }) {
            guard let now = UnixSocketFile.identity(file.path), now.device == file.device, now.inode == file.inode else { continue }
            if unlink(file.path) != 0 {
                logger.warning("cannot remove unix:\(file.path) on stop: \(String(cString: strerror(errno))); the next start removes it as stale (give the server user write access to its directory to avoid this)")
            }
        }
    }

    /// Service: bind, run until graceful shutdown is requested (or the task is cancelled),
    /// then stop.
    public func run() async throws {
        if boundAddresses.isEmpty { try await start() }
        do {
            try await gracefulShutdown()
            logger.info("graceful stop: answering requests in flight, then closing")
        } catch {}
        await stop()
    }
}

/// Why the server cannot start or stop as asked, with errno when a system call failed.
public struct ServerError: Error, CustomStringConvertible {
    public let description: String
    public let errno: Int32?
    public init(_ description: String, errno: Int32? = nil) {
        self.description = description
        self.errno = errno
    }
}
