// Serves the Prometheus text format at GET /metrics over plain HTTP on a loopback address,
// and GET /ratelimit/status?rule=R&key=K for `backstop ratelimit status`. It answers
// nothing else (404) and keeps no state besides the registry it renders.

import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Foundation

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

    /// Answers a rate-limit status question (rule, key) from the running configuration.
    public typealias StatusProvider = @Sendable (_ rule: String, _ key: String) async throws -> String

    public static func start(host: String, port: Int, registry: PrometheusCollectorRegistry,
                             group: any EventLoopGroup, status: StatusProvider? = nil) async throws -> MetricsEndpoint {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry, status: status))
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
    let status: MetricsEndpoint.StatusProvider?
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry, status: MetricsEndpoint.StatusProvider?) {
        self.registry = registry
        self.status = status
    }

    /// Splits "/path?a=1&b=%2B" into the path and its percent-decoded parameters.
    static func parse(_ uri: String) -> (path: String, query: [String: String]) {
        let parts = uri.split(separator: "?", maxSplits: 1)
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                let name = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                query[name] = kv.count == 2 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            }
        }
        return (parts.first.map(String.init) ?? "/", query)
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
            if !keepAlive { context.close(promise: nil) }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let (path, query) = Self.parse(head.uri)
            if head.method == .GET && path == "/metrics" {
                respond(context: context, head: head, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                        body: registry.emitToBuffer())
            } else if head.method == .GET && path == "/ratelimit/status", let provider = status {
                let rule = query["rule"] ?? "", key = query["key"] ?? ""
                let loop = context.eventLoop
                let promise = loop.makePromise(of: (HTTPResponseStatus, String).self)
                promise.completeWithTask {
                    do { return (.ok, try await provider(rule, key) + "\n") } catch { return (.badRequest, "\(error)\n") }
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
