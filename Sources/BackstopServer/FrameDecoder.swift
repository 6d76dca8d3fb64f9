// Turns the bytes of one Postfix connection into frames with the bounded protocol parser of
// its listener (RequestParser for policy connections, SocketmapParser for socketmap ones).
// ConnectionHandler feeds it each read's bytes itself: it is not a NIO ByteToMessageHandler,
// whose extra pipeline hop cost ~4,100 instructions per request (callgrind, spf-peers).
// The parsers stay free of NIO (the fuzzers drive them directly); this only feeds them and
// passes on what they complete. Errors are the parsers' (ProtocolError). Not generic, for
// the reason ConnectionResponder gives.

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

struct FrameDecoder {
    /// Which protocol the listener speaks: only that parser is fed (the other stays empty).
    /// Not two optionals: reading a field through an optional copied the whole parser (its
    /// inline attribute table included) several times per request.
    private let speaksPolicy: Bool
    private var policy: RequestParser
    private var socketmap: SocketmapParser

    init(_ parser: RequestParser) {
        speaksPolicy = true
        policy = parser
        socketmap = SocketmapParser()
    }

    init(_ parser: SocketmapParser) {
        speaksPolicy = false
        policy = RequestParser()
        socketmap = parser
    }

    private var isIdle: Bool { speaksPolicy ? policy.isIdle : socketmap.isIdle }

    /// Feeds one read's bytes (all of them: what ends no request stays in the parser) and
    /// hands `emit` each request they complete, in order.
    mutating func feed(_ buffer: ByteBuffer, _ emit: (ConnectionFrame) -> Void) throws {
        let wasIdle = isIdle
        var completed = false
        try buffer.withUnsafeReadableBytes { raw in
            if speaksPolicy {
                try policy.feed(raw) { request in
                    completed = true
                    emit(.request(.policy(request)))
                }
            } else {
                try socketmap.feed(raw) { request in
                    completed = true
                    emit(.request(.socketmap(request)))
                }
            }
        }
        // Only a request left unfinished at the end of a read is reported; the common
        // whole-request read costs nothing extra.
        if !isIdle && (wasIdle || completed) { emit(.started) }
    }
}
