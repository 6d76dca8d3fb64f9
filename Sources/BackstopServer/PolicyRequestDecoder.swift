// NIO's ByteToMessageDecoder around the bounded RequestParser: turns the bytes of one
// connection into PolicyFrames. The parser stays free of NIO (the fuzzers drive it
// directly); this adapter only feeds it and passes on what it completes. Errors are the
// parser's (ProtocolError), raised through the pipeline for the connection handler.

import BackstopCore
import NIOCore

/// What the decoder hands the connection handler.
enum PolicyFrame {
    /// A complete request.
    case request(PolicyRequest)
    /// The first bytes of a request arrived and the rest has not (the read timeout starts).
    case started
}

struct PolicyRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = PolicyFrame

    private var parser: RequestParser

    init(limits: ProtocolLimits) { parser = RequestParser(limits: limits) }

    static func handler(limits: ProtocolLimits) -> ByteToMessageHandler<PolicyRequestDecoder> {
        ByteToMessageHandler(PolicyRequestDecoder(limits: limits))
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let wasIdle = parser.isIdle
        var completed = false
        try buffer.withUnsafeReadableBytes { raw in
            try parser.feed(raw) { request in
                completed = true
                context.fireChannelRead(NIOAny(PolicyFrame.request(request)))
            }
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        // Only a request left unfinished at the end of a read is reported; the common
        // whole-request read costs nothing extra.
        if !parser.isIdle && (wasIdle || completed) { context.fireChannelRead(wrapInboundOut(.started)) }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        if buffer.readableBytes > 0 { _ = try decode(context: context, buffer: &buffer) }
        return .needMoreData
    }
}
