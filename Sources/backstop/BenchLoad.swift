// The load loop of `backstop bench`: N connections on one event loop, each sending one
// request, waiting for the whole answer, then sending the next (as Postfix does), or a
// new connection per request. Latencies go into an HdrHistogram per connection.

import BackstopCore
import BackstopServer
import Histogram
import NIOCore
import NIOPosix

/// What one connection measured.
struct BenchTally: Sendable {
    var latencies = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    var actions: [String: Int] = [:]
    var errors = 0
    var connects = 0

    mutating func merge(_ other: BenchTally) {
        latencies.add(other.latencies)
        for (k, v) in other.actions { actions[k, default: 0] += v }
        errors += other.errors
        connects += other.connects
    }
}

/// Shared per-run state. @unchecked Sendable: touched only on the bench event loop.
final class BenchRun: @unchecked Sendable {
    let mix: BenchMix
    let endpoint: ListenerSettings.Endpoint
    let warmupEnd: NIODeadline
    let end: NIODeadline
    let newConnectionPerRequest: Bool
    var sequence: UInt64 = 0
    var measuredRequests = 0

    init(mix: BenchMix, endpoint: ListenerSettings.Endpoint, warmup: TimeAmount, duration: TimeAmount, newConnection: Bool) {
        self.mix = mix
        self.endpoint = endpoint
        self.warmupEnd = .now() + warmup
        self.end = .now() + warmup + duration
        self.newConnectionPerRequest = newConnection
    }
}

/// @unchecked Sendable: a channel handler, used only on its channel's event loop.
final class BenchConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let run: BenchRun
    let index: Int
    var tally: BenchTally
    let done: EventLoopPromise<BenchTally>
    var rng: SplitMix
    var sentAt = NIODeadline.now()
    var received: [UInt8] = []
    var request: [UInt8] = []
    var finished = false

    init(run: BenchRun, index: Int, tally: BenchTally, done: EventLoopPromise<BenchTally>) {
        self.run = run
        self.index = index
        self.tally = tally
        self.done = done
        self.rng = SplitMix(state: UInt64(index) &* 7919 &+ 1)
    }

    func channelActive(context: ChannelHandlerContext) {
        tally.connects += 1
        sendNext(context: context)
    }

    func sendNext(context: ChannelHandlerContext) {
        if NIODeadline.now() >= run.end { finish(context: context); return }
        request.removeAll(keepingCapacity: true)
        run.sequence += 1
        run.mix.expand(sequence: run.sequence, connection: index, rng: &rng, into: &request)
        var buffer = context.channel.allocator.buffer(capacity: request.count)
        buffer.writeBytes(request)
        sentAt = .now()
        context.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
        guard received.count >= 2, received[received.count - 1] == 10, received[received.count - 2] == 10 else { return }
        let now = NIODeadline.now()
        let line = String(decoding: received.dropLast(2), as: UTF8.self)
        received.removeAll(keepingCapacity: true)
        if now >= run.warmupEnd && now < run.end {
            _ = tally.latencies.record(UInt64(max(0, (now - sentAt).nanoseconds / 1000)))
            if line.hasPrefix("action="), !line.contains("\n") {
                let word = line.dropFirst(7).split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
                tally.actions[word, default: 0] += 1
                run.measuredRequests += 1
            } else {
                tally.errors += 1
            }
        }
        if run.newConnectionPerRequest {
            finish(context: context)
        } else {
            sendNext(context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            tally.errors += 1
            finished = true
            done.succeed(tally)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func finish(context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        context.close(promise: nil)
        done.succeed(tally)
    }
}

enum BenchLoad {
    /// Runs the load and returns the merged tally and the measured duration.
    static func run(_ run: BenchRun, connections: Int, group: any EventLoopGroup) async throws -> BenchTally {
        let loop = group.next()
        var total = BenchTally()
        try await withThrowingTaskGroup(of: BenchTally.self) { tasks in
            for index in 0..<connections {
                tasks.addTask {
                    var tally = BenchTally()
                    while true {
                        let promise = loop.makePromise(of: BenchTally.self)
                        let handler = BenchConnectionHandler(run: run, index: index, tally: tally, done: promise)
                        let bootstrap = ClientBootstrap(group: loop)
                            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                            .channelInitializer { channel in
                                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
                            }
                        do {
                            switch run.endpoint {
                            case .tcp(let host, let port): _ = try await bootstrap.connect(host: host, port: port).get()
                            case .unix(let path): _ = try await bootstrap.connect(unixDomainSocketPath: path).get()
                            }
                            tally = try await promise.futureResult.get()
                        } catch {
                            promise.fail(error)
                            tally.errors += 1
                            try await Task.sleep(nanoseconds: 10_000_000)
                        }
                        if NIODeadline.now() >= run.end { return tally }
                        // Without -N a connection only ends early on an error: reconnect.
                    }
                }
            }
            for try await tally in tasks { total.merge(tally) }
        }
        return total
    }
}
