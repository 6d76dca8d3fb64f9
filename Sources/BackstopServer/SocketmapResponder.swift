// What a socketmap connection does with a lookup: answer it from the maps of the engine in
// force on this event loop (always at once: every map is in memory), count it, log it
// (debug; a TEMP or PERM at warning, since Postfix then defers mail), and encode the
// netstring. The connection's framing, order and timers are ConnectionHandler's.

import BackstopCore
import NIOCore

struct SocketmapResponder {
    let state: ServerState
    let loopEngine: LoopEngine
    let peer: String

    func answer(_ request: SocketmapRequest) -> SocketmapReply {
        let (reply, map) = SocketmapMaps.answer(request, engine: loopEngine.engine)
        SocketmapMaps.count(map: map, reply: reply)
        return reply
    }

    func write(_ request: SocketmapRequest, _ reply: SocketmapReply, elapsedNanos: Int64, into buffer: inout ByteBuffer) {
        switch reply {
        case .temp(let why), .perm(let why):
            state.warnings.warn(.socketmapFailure, state.logger, "socketmap \(reply.status): map=\(LogEscaping.field(request.map)) key=\(LogEscaping.field(request.key)) reason=\(LogEscaping.field(why)) peer=\(LogEscaping.field(peer))")
        case .ok(let value):
            state.logger.debug("socketmap OK: map=\(LogEscaping.field(request.map)) key=\(LogEscaping.field(request.key)) value=\(LogEscaping.field(value))")
        case .notFound:
            state.logger.debug("socketmap NOTFOUND: map=\(LogEscaping.field(request.map)) key=\(LogEscaping.field(request.key))")
        }
        buffer.writeBytes(reply.encoded)
    }
}
