// Serves the Prometheus text format at GET /metrics over plain HTTP on a loopback address.
// It answers nothing else (404) and keeps no state besides the registry it renders.

import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

public enum MetricsSetup {
    /// Latency buckets fine enough for a server that answers in microseconds.
    static let buckets: [Swift.Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
        .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
    ]

    /// Routes swift-metrics to a Prometheus registry. Must run before any metric is created.
    public static func bootstrap() -> PrometheusCollectorRegistry {
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

    public static func start(host: String, port: Int, registry: PrometheusCollectorRegistry,
                             group: any EventLoopGroup) async throws -> MetricsEndpoint {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
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

final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            let found = head.method == .GET && (head.uri == "/metrics" || head.uri.hasPrefix("/metrics?"))
            var body = context.channel.allocator.buffer(capacity: 4096)
            if found {
                body.writeBytes(registry.emitToBuffer())
            } else {
                body.writeString("not found: metrics are at /metrics\n")
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.readableBytes))
            let response = HTTPResponseHead(version: head.version, status: found ? .ok : .notFound, headers: headers)
            context.write(wrapOutboundOut(.head(response)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let keepAlive = head.isKeepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
            self.head = nil
        }
    }
}
