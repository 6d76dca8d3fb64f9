// The server's way of encoding an answer: straight into the channel's ByteBuffer, with the
// same bytes as ResponseEncoder.encode(_:). Kept apart so the encoder itself needs no NIO
// (the fuzzers compile it alone).

import NIOCore

extension ResponseEncoder {
    /// The same bytes as `encode(_:)`, appended to `buffer` in place: the server's path,
    /// which so builds no intermediate array per answer.
    public static func encode(_ action: PolicyAction, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("action=")
        buffer.writeString(actionText(action))
        buffer.writeStaticString("\n\n")
    }
}
