// Asks the configured resolvers one question, on an event loop, without blocking: over UDP
// from a fresh socket (a random source port) with a random query ID, again over TCP when
// the answer is truncated, then the next resolver on a failure, all within one timeout.
// A reply counts only when it comes from the resolver asked and decodes as the answer to
// our ID and question. An alias the resolver did not follow is followed, a few hops at
// most. It does not cache and does not coalesce (SPFDNS does both).

import BackstopCore
import Glibc
import NIOCore
import NIOPosix

/// One resolver to ask: a numeric address and a port.
public struct DNSResolverAddress: Sendable, Hashable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "192.0.2.53", "192.0.2.53:5353", "::1", "[::1]:5353".
    public init?(_ text: String) {
        let t = text.trimmingSpaces
        var host = t
        var port = 53
        if t.hasPrefix("[") {
            guard let close = t.firstIndex(of: "]") else { return nil }
            host = String(t[t.index(after: t.startIndex)..<close])
            let rest = t[t.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { return nil }
                port = p
            }
        } else if t.filter({ $0 == ":" }).count == 1, let colon = t.firstIndex(of: ":") {
            host = String(t[..<colon])
            guard let p = Int(t[t.index(after: colon)...]) else { return nil }
            port = p
        }
        guard (1...65535).contains(port), IPAddress(host) != nil else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The nameservers of /etc/resolv.conf, or 127.0.0.1:53 when there are none.
    public static func system(resolvConf path: String = "/etc/resolv.conf") -> [DNSResolverAddress] {
        var out: [DNSResolverAddress] = []
        // resolv.conf is a small regular file; anything else (or over 64 KiB) means the default.
        let bytes = (try? RegularFile.read(path, maxBytes: 64 * 1024)) ?? []
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let words = line.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") })
            guard words.count >= 2, words[0].elementsEqual("nameserver".utf8) else { continue }
            var host = String(decoding: words[1], as: UTF8.self)
            if let zone = host.firstIndex(of: "%") { host = String(host[..<zone]) }
            if IPAddress(host) != nil { out.append(DNSResolverAddress(host: host, port: 53)) }
        }
        return out.isEmpty ? [DNSResolverAddress(host: "127.0.0.1", port: 53)] : out
    }
}

public final class DNSResolver: Sendable {
    public let servers: [DNSResolverAddress]
    private let addresses: [SocketAddress]
    /// One question never takes longer than this, whatever the resolvers do.
    public let timeout: TimeAmount
    /// Alias hops followed across queries.
    public static let maxAliasQueries = 8

    public init(resolvers: [DNSResolverAddress], timeout: TimeAmount) {
        let list = resolvers.isEmpty ? DNSResolverAddress.system() : resolvers
        servers = list
        addresses = list.compactMap { try? SocketAddress(ipAddress: $0.host, port: $0.port) }
        self.timeout = timeout
    }

    /// The answer to `question`; the future always succeeds (a failure is an answer with
    /// status serverFailure or timeout).
    public func resolve(_ question: DNSQuestion, on loop: any EventLoop) -> EventLoopFuture<DNSAnswer> {
        let deadline = NIODeadline.now() + timeout
        return ask(question, resolver: 0, deadline: deadline, hops: 0, seen: [question.name], on: loop)
    }

    private func ask(_ question: DNSQuestion, resolver index: Int, deadline: NIODeadline, hops: Int,
                     seen: Set<DNSName>, on loop: any EventLoop) -> EventLoopFuture<DNSAnswer> {
        let remaining = deadline - .now()
        guard index < addresses.count, remaining > TimeAmount.milliseconds(1) else {
            return loop.makeSucceededFuture(DNSAnswer(status: .timeout))
        }
        // Later resolvers get a share of the time that is left.
        let left = addresses.count - index
        let share = left == 1 ? remaining : max(.nanoseconds(remaining.nanoseconds / Int64(left)), min(remaining, .milliseconds(200)))
        let server = addresses[index]
        // UDP and a TCP retry after a truncated answer share one slice: the retry does not
        // start a fresh one, or one question could take twice `timeout`.
        let until = NIODeadline.now() + share
        return DNSExchange.udp(question, server: server, until: until, on: loop).flatMap { outcome in
            switch outcome {
            case .truncated:
                return DNSExchange.tcp(question, server: server, until: until, on: loop)
            case .answer, .timeout:
                return loop.makeSucceededFuture(outcome)
            }
        }.flatMap { outcome -> EventLoopFuture<DNSAnswer> in
            guard case .answer(let answer) = outcome, answer.status == .success || answer.status == .nameError else {
                let next = self.ask(question, resolver: index + 1, deadline: deadline, hops: hops, seen: seen, on: loop)
                if case .answer(let failed) = outcome, index + 1 >= self.addresses.count { return loop.makeSucceededFuture(failed) }
                return next
            }
            guard let alias = answer.alias else { return loop.makeSucceededFuture(answer) }
            // The resolver left an alias to us: ask for its target (from the first resolver).
            guard hops < DNSResolver.maxAliasQueries, !seen.contains(alias) else {
                return loop.makeSucceededFuture(DNSAnswer(status: .serverFailure))
            }
            // The answer rests on the alias too: it is kept no longer than the alias may be.
            return self.ask(DNSQuestion(alias, question.type), resolver: 0, deadline: deadline, hops: hops + 1,
                            seen: seen.union([alias]), on: loop).map { followed in
                var followed = followed
                followed.ttl = min(followed.ttl, answer.ttl)
                return followed
            }
        }
    }
}

/// One query to one server over UDP or TCP.
enum DNSExchange {
    enum Outcome: Sendable {
        case answer(DNSAnswer)
        case truncated
        case timeout
    }

    static func udp(_ question: DNSQuestion, server: SocketAddress, until deadline: NIODeadline, on loop: any EventLoop) -> EventLoopFuture<Outcome> {
        let id = UInt16.random(in: 0...UInt16.max)
        let promise = loop.makePromise(of: Outcome.self)
        let handler = UDPHandler(id: id, question: question, server: server, promise: promise)
        let bind = server.protocol == .inet6 ? "::" : "0.0.0.0"
        DatagramBootstrap(group: loop)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) } }
            .bind(host: bind, port: 0)
            .whenComplete { result in
                ask(over: result, until: deadline, on: loop, promise: promise) { channel in
                    let buffer = channel.allocator.buffer(bytes: DNSMessage.query(id: id, question))
                    channel.writeAndFlush(AddressedEnvelope(remoteAddress: server, data: buffer)).whenFailure { _ in
                        promise.succeed(.answer(DNSAnswer(status: .serverFailure)))
                    }
                }
            }
        return promise.futureResult
    }

    /// Once the channel is up (or not): the deadline answers `.timeout`, any answer closes the
    /// channel, and `send` writes the question; a channel that could not be set up is a
    /// server failure.
    private static func ask(over result: Result<any Channel, any Error>, until deadline: NIODeadline, on loop: any EventLoop,
                            promise: EventLoopPromise<Outcome>, send: (any Channel) -> Void) {
        switch result {
        case .failure:
            promise.succeed(.answer(DNSAnswer(status: .serverFailure)))
        case .success(let channel):
            let timer = loop.scheduleTask(deadline: deadline) { promise.succeed(.timeout) }
            promise.futureResult.whenComplete { _ in
                timer.cancel()
                channel.close(promise: nil)
            }
            send(channel)
        }
    }

    static func tcp(_ question: DNSQuestion, server: SocketAddress, until deadline: NIODeadline, on loop: any EventLoop) -> EventLoopFuture<Outcome> {
        let id = UInt16.random(in: 0...UInt16.max)
        let promise = loop.makePromise(of: Outcome.self)
        let remaining = deadline - .now()
        guard remaining > .zero else { return loop.makeSucceededFuture(.timeout) }
        ClientBootstrap(group: loop)
            .connectTimeout(remaining)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(TCPLengthDecoder()))
                    try channel.pipeline.syncOperations.addHandler(TCPHandler(id: id, question: question, promise: promise))
                }
            }
            .connect(to: server)
            .whenComplete { result in
                ask(over: result, until: deadline, on: loop, promise: promise) { channel in
                    let packet = DNSMessage.query(id: id, question)
                    var buffer = channel.allocator.buffer(capacity: packet.count + 2)
                    buffer.writeInteger(UInt16(packet.count))
                    buffer.writeBytes(packet)
                    channel.writeAndFlush(buffer, promise: nil)
                }
            }
        return promise.futureResult
    }

    final class UDPHandler: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let id: UInt16
        let question: DNSQuestion
        let server: SocketAddress
        let promise: EventLoopPromise<Outcome>

        init(id: UInt16, question: DNSQuestion, server: SocketAddress, promise: EventLoopPromise<Outcome>) {
            self.id = id
            self.question = question
            self.server = server
            self.promise = promise
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            // Only the resolver asked may answer.
            guard envelope.remoteAddress == server else { return }
            let bytes = Array(envelope.data.readableBytesView)
            switch DNSMessage.decode(bytes, id: id, question: question) {
            case .notOurs: return
            case .truncated: promise.succeed(.truncated)
            case .answer(let answer): promise.succeed(.answer(answer))
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // ICMP port unreachable and the like: this resolver failed.
            promise.succeed(.answer(DNSAnswer(status: .serverFailure)))
        }
    }

    final class TCPHandler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let id: UInt16
        let question: DNSQuestion
        let promise: EventLoopPromise<Outcome>

        init(id: UInt16, question: DNSQuestion, promise: EventLoopPromise<Outcome>) {
            self.id = id
            self.question = question
            self.promise = promise
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(unwrapInboundIn(data).readableBytesView)
            switch DNSMessage.decode(bytes, id: id, question: question) {
            case .answer(let answer): promise.succeed(.answer(answer))
            case .notOurs, .truncated: promise.succeed(.answer(DNSAnswer(status: .serverFailure)))
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.succeed(.answer(DNSAnswer(status: .serverFailure)))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            promise.succeed(.answer(DNSAnswer(status: .serverFailure)))
        }
    }

    /// DNS over TCP: a two-octet length, then the message (RFC 1035 §4.2.2).
    struct TCPLengthDecoder: ByteToMessageDecoder {
        typealias InboundOut = ByteBuffer

        mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
            guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
                  buffer.readableBytes >= 2 + Int(length) else { return .needMoreData }
            buffer.moveReaderIndex(forwardBy: 2)
            context.fireChannelRead(NIOAny(buffer.readSlice(length: Int(length))!))
            return .continue
        }
    }
}
