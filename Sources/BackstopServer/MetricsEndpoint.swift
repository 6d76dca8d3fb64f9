// Serves the Prometheus text format at GET /metrics over plain HTTP, and the rate-limit
// control of `backstop ratelimit` (GET /ratelimit/status?rule=R&key=K, GET
// /ratelimit/list?rule=R[&over=1][&limit=N], POST /ratelimit/reset?rule=R&key=K), to
// clients in metrics.allow only, with its own connection cap and read/idle timeouts. It
// answers nothing else (404) and keeps no state besides the registry it renders.

import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Foundation
import BackstopCore
import Synchronization

public enum MetricsSetup {
    /// Latency buckets fine enough for a server that answers in microseconds.
    static let buckets: [Swift.Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
        .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
    ]

    /// When this process started, for process_start_time_seconds.
    static let startTime = Date().timeIntervalSince1970

    /// Routes swift-metrics to a Prometheus registry. Must run before any metric is created.
    public static func bootstrap() -> PrometheusCollectorRegistry {
        _ = startTime
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = buckets
        MetricsSystem.bootstrap(factory)
        return registry
    }
}

public final class MetricsEndpoint: Sendable {
    let registry: PrometheusCollectorRegistry
    let channel: any Channel

    public var address: String { channel.localAddress.map(PolicyServer.describe) ?? "?" }

    /// A header `POST /ratelimit/reset` must carry (`backstop ratelimit` sends it). A web page
    /// can make a browser POST to any address without asking, but not with a header of its
    /// own: without it, a page an administrator opens on a host in metrics.allow could reset
    /// a key (cross-site request forgery).
    public static let commandHeader = "X-Backstop-Command"

    /// A question of `backstop ratelimit`, answered from the running configuration.
    public enum RateLimitQuestion: Sendable {
        case status(rule: String, key: String)
        case list(rule: String, overOnly: Bool, limit: Int)
        case reset(rule: String, key: String)
    }

    /// Answers rate-limit questions; the answer is the text the command prints.
    public typealias StatusProvider = @Sendable (RateLimitQuestion) async throws -> String

    /// Binds `settings.listen` on the server's event loops. Its connections count toward the
    /// server's max_connections as well as toward `settings.maxConnections`.
    public static func start(settings: MetricsSettings, registry: PrometheusCollectorRegistry, server: PolicyServer,
                             status: StatusProvider? = nil) async throws -> MetricsEndpoint {
        guard let listen = settings.listen, case .tcp(let host, let port) = ListenerSettings.parseEndpoint(listen) else {
            throw ServerError("metrics.listen is not host:port")
        }
        let admission = MetricsAdmission(state: server.state)
        let channel = try await ServerBootstrap(group: server.group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard admission.admit(channel) else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    let clock = MetricsConnectionClock(settings: server.state.metricsSettings.withLockedValue { $0 })
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestStart(clock: clock))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry, status: status, clock: clock,
                                                                                      state: server.state))
                }
            }
            .bind(host: host, port: port).get()
        return MetricsEndpoint(registry: registry, channel: channel)
    }

    init(registry: PrometheusCollectorRegistry, channel: any Channel) {
        self.registry = registry
        self.channel = channel
    }

    public func stop() async { try? await channel.close() }
}

/// Who may hold a metrics connection: clients in metrics.allow, at most
/// metrics.max_connections of them, each also taking a place in server.max_connections.
/// Both are read as last reloaded, at each connection.
final class MetricsAdmission: Sendable {
    let state: ServerState
    let open = Atomic<Int>(0)
    let limited = Counter(label: "backstop_connections_rejected_total", dimensions: [("reason", "metrics_max_connections")])

    init(state: ServerState) {
        self.state = state
    }

    func admit(_ channel: any Channel) -> Bool {
        let peer = channel.remoteAddress.map(PolicyServer.describe) ?? "?"
        let settings = state.metricsSettings.withLockedValue { $0 }
        guard let address = channel.remoteAddress?.ipAddress.flatMap(IPAddress.init), settings.allow.contains(address) else {
            state.metrics.connectionsRefused.increment()
            state.warnings.warn(.metricsRefusedByAllow, state.logger, "metrics connection refused: client not in metrics.allow: peer=\(LogEscaping.field(peer))")
            return false
        }
        if open.add(1, ordering: .relaxed).newValue > settings.maxConnections {
            open.subtract(1, ordering: .relaxed)
            limited.increment()
            state.warnings.warn(.metricsRefusedAtMax, state.logger, "metrics connection refused: metrics.max_connections (\(settings.maxConnections)) reached: peer=\(LogEscaping.field(peer))")
            return false
        }
        guard state.takeConnection(peer: peer) else {
            open.subtract(1, ordering: .relaxed)
            return false
        }
        channel.closeFuture.whenComplete { _ in
            self.open.subtract(1, ordering: .relaxed)
            self.state.releaseConnection()
        }
        return true
    }
}

/// The one timer of a metrics connection: from its start or its last answer, a request must
/// begin within idle_timeout, and once its first byte has come, be complete within
/// read_timeout. Only on the connection's event loop.
final class MetricsConnectionClock {
    let settings: MetricsSettings
    private var timer: Scheduled<Void>?
    private var reading = false

    init(settings: MetricsSettings) { self.settings = settings }

    func arm(_ context: ChannelHandlerContext, reading: Bool) {
        self.reading = reading
        timer?.cancel()
        let after = reading ? settings.readTimeout : settings.idleTimeout
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: after) { channel.close(promise: nil) }
    }

    func requestStarted(_ context: ChannelHandlerContext) { if !reading { arm(context, reading: true) } }
    /// The request is complete: read_timeout no longer runs while it is answered (a
    /// rate-limit question may wait up to RateLimitCheck.statusTimeout for the store); the
    /// answer must be written within that and read_timeout more, or the connection is closed
    /// (a client that does not read its answer keeps no place).
    func requestComplete(_ context: ChannelHandlerContext) {
        reading = false
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: RateLimitCheck.statusTimeout + settings.readTimeout) { channel.close(promise: nil) }
    }
    func answered(_ context: ChannelHandlerContext) { arm(context, reading: false) }
    func cancel() { timer?.cancel() }
}

/// Sees the raw bytes before the HTTP decoder, to start the read timeout at a request's
/// first byte (a client trickling a header a byte at a time is still cut off).
final class MetricsRequestStart: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let clock: MetricsConnectionClock

    init(clock: MetricsConnectionClock) { self.clock = clock }

    func channelActive(context: ChannelHandlerContext) {
        clock.arm(context, reading: false)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        clock.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clock.requestStarted(context)
        context.fireChannelRead(data)
    }
}

final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    let status: MetricsEndpoint.StatusProvider?
    let clock: MetricsConnectionClock
    /// For the warning about a malformed request (rate-limited as every client-made one).
    let state: ServerState
    private var head: HTTPRequestHead?
    /// Requests answered from what one read brought. HTTP lets a client send requests
    /// ahead; /metrics is answered at once, so one read of 64 KiB of `GET /metrics` would
    /// render thousands of answers in a row on an event loop Postfix's connections share.
    private var answeredThisRead = 0
    /// The most requests answered from one read; a client that sends more ahead (no
    /// scraper does) is closed.
    static let maxPipelined = 8

    init(registry: PrometheusCollectorRegistry, status: MetricsEndpoint.StatusProvider?, clock: MetricsConnectionClock,
         state: ServerState) {
        self.registry = registry
        self.status = status
        self.clock = clock
        self.state = state
    }

    /// A request NIO's HTTP decoder could not read: it has answered 400 and closes the
    /// connection; the request is logged (escaped, at most once a second) and nothing else.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let peer = context.channel.remoteAddress.map(PolicyServer.describe) ?? "?"
        if error is HTTPParserError {
            state.warnings.warn(.metricsBadRequest, state.logger,
                                "malformed metrics request, closing: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
        } else {
            // A reset connection and the like: the client's business, not a bad request.
            state.logger.debug("metrics connection error: peer=\(LogEscaping.field(peer)) error=\(LogEscaping.field("\(error)"))")
        }
        context.close(promise: nil)
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus,
                         contentType: String, body bytes: [UInt8]) {
        var body = context.channel.allocator.buffer(capacity: bytes.count)
        body.writeBytes(bytes)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let keepAlive = head.isKeepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) } else { self.clock.answered(context) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        answeredThisRead = 0
        context.fireChannelReadComplete()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            // A client that does not read its answers, or sends many requests ahead, gets no
            // more of them: each costs a rendering, and the answers would pile up unsent.
            answeredThisRead += 1
            guard answeredThisRead <= Self.maxPipelined, context.channel.isWritable else {
                context.close(promise: nil)
                return
            }
            clock.requestComplete(context)
            let (path, query) = HTTPTarget.parse(head.uri)
            if head.method == .GET && path == "/metrics" {
                respond(context: context, head: head, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                        body: MetricsHelp.render(registry.emitToBuffer(), startTime: MetricsSetup.startTime))
            } else if path.hasPrefix("/ratelimit/"), let provider = status {
                let rule = query["rule"] ?? "", key = query["key"] ?? ""
                let question: MetricsEndpoint.RateLimitQuestion
                switch (head.method, path) {
                case (.GET, "/ratelimit/status"): question = .status(rule: rule, key: key)
                case (.GET, "/ratelimit/list"):
                    question = .list(rule: rule, overOnly: query["over"] == "1", limit: Int(query["limit"] ?? "") ?? 50)
                case (.POST, "/ratelimit/reset") where head.headers.contains(name: MetricsEndpoint.commandHeader):
                    question = .reset(rule: rule, key: key)
                case (.POST, "/ratelimit/reset"):
                    return respond(context: context, head: head, status: .forbidden, contentType: "text/plain",
                                   body: Array("reset needs the header \(MetricsEndpoint.commandHeader) (backstop ratelimit reset sends it)\n".utf8))
                case (_, "/ratelimit/reset"):
                    return respond(context: context, head: head, status: .methodNotAllowed, contentType: "text/plain",
                                   body: Array("reset changes state: use POST\n".utf8))
                default:
                    return respond(context: context, head: head, status: .notFound, contentType: "text/plain",
                                   body: Array("not found: /ratelimit/status, /ratelimit/list, /ratelimit/reset (POST)\n".utf8))
                }
                let loop = context.eventLoop
                let promise = loop.makePromise(of: (HTTPResponseStatus, String).self)
                promise.completeWithTask {
                    do { return (.ok, try await provider(question) + "\n") } catch { return (.badRequest, "\(error)\n") }
                }
                promise.futureResult.assumeIsolated().whenSuccess { (status, text) in
                    self.respond(context: context, head: head, status: status, contentType: "text/plain; charset=utf-8",
                                 body: Array(text.utf8))
                }
            } else {
                respond(context: context, head: head, status: .notFound, contentType: "text/plain",
                        body: Array("not found: metrics are at /metrics, rate-limit state at /ratelimit/status?rule=R&key=K\n".utf8))
            }
        }
    }
}
