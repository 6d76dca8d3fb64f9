// NIO's ByteToMessageDecoder around a bounded protocol parser (RequestParser for policy
// connections, SocketmapParser for socketmap ones): turns the bytes of one connection into
// frames. The parsers stay free of NIO (the fuzzers drive them directly); this adapter
// only feeds them and passes on what they complete. Errors are the parsers'
// (ProtocolError), raised through the pipeline for the connection handler.

import BackstopCore
import NIOCore

/// What the decoder hands the connection handler.
enum ConnectionFrame<Request> {
    /// A complete request.
    case request(Request)
    /// The first bytes of a request arrived and the rest has not (the read timeout starts).
    case started
}

/// A parser of one connection's byte stream.
protocol StreamParser {
    associatedtype Output
    /// No byte of a next request has been read.
    var isIdle: Bool { get }
    /// Consumes `input`, calling `emit` for each request it completes; throws ProtocolError.
    mutating func parse(_ input: UnsafeRawBufferPointer, emit: (Output) throws -> Void) throws
}

extension RequestParser: StreamParser {
    mutating func parse(_ input: UnsafeRawBufferPointer, emit: (PolicyRequest) throws -> Void) throws {
        try feed(input, emit: emit)
    }
}

extension SocketmapParser: StreamParser {
    mutating func parse(_ input: UnsafeRawBufferPointer, emit: (SocketmapRequest) throws -> Void) throws {
        try feed(input, emit: emit)
    }
}

struct FrameDecoder<Parser: StreamParser>: ByteToMessageDecoder {
    typealias InboundOut = ConnectionFrame<Parser.Output>

    private var parser: Parser

    init(_ parser: Parser) { self.parser = parser }

    static func handler(_ parser: Parser) -> ByteToMessageHandler<FrameDecoder<Parser>> {
        ByteToMessageHandler(FrameDecoder(parser))
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let wasIdle = parser.isIdle
        var completed = false
        try buffer.withUnsafeReadableBytes { raw in
            try parser.parse(raw) { request in
                completed = true
                context.fireChannelRead(NIOAny(InboundOut.request(request)))
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
