// NIO's ByteToMessageDecoder around the bounded protocol parsers (RequestParser for policy
// connections, SocketmapParser for socketmap ones): turns the bytes of one connection into
// frames. The parsers stay free of NIO (the fuzzers drive them directly); this adapter
// only feeds them and passes on what they complete. Errors are the parsers'
// (ProtocolError), raised through the pipeline for the connection handler. Not generic,
// for the reason ConnectionResponder gives.

import BackstopCore
import NIOCore

/// A request of either protocol a listener speaks.
enum ConnectionRequest {
    case policy(PolicyRequest)
    case socketmap(SocketmapRequest)
}

/// What the decoder hands the connection handler.
enum ConnectionFrame {
    /// A complete request.
    case request(ConnectionRequest)
    /// The first bytes of a request arrived and the rest has not (the read timeout starts).
    case started
}

struct FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ConnectionFrame

    /// Exactly one of the two is set, for the listener's protocol.
    private var policy: RequestParser?
    private var socketmap: SocketmapParser?

    static func handler(_ parser: RequestParser) -> ByteToMessageHandler<FrameDecoder> {
        ByteToMessageHandler(FrameDecoder(policy: parser, socketmap: nil))
    }

    static func handler(_ parser: SocketmapParser) -> ByteToMessageHandler<FrameDecoder> {
        ByteToMessageHandler(FrameDecoder(policy: nil, socketmap: parser))
    }

    private var isIdle: Bool { policy?.isIdle ?? socketmap?.isIdle ?? true }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let wasIdle = isIdle
        var completed = false
        try buffer.withUnsafeReadableBytes { raw in
            // Optional chaining mutates the parser in place (no copy of its buffers).
            try policy?.feed(raw) { request in
                completed = true
                context.fireChannelRead(NIOAny(ConnectionFrame.request(.policy(request))))
            }
            try socketmap?.feed(raw) { request in
                completed = true
                context.fireChannelRead(NIOAny(ConnectionFrame.request(.socketmap(request))))
            }
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        // Only a request left unfinished at the end of a read is reported; the common
        // whole-request read costs nothing extra.
        if !isIdle && (wasIdle || completed) { context.fireChannelRead(wrapInboundOut(.started)) }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        if buffer.readableBytes > 0 { _ = try decode(context: context, buffer: &buffer) }
        return .needMoreData
    }
}
