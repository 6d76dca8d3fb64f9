// The server's way of encoding an answer: straight into the channel's ByteBuffer, with the
// same bytes as ResponseEncoder.encode(_:). Kept apart so the encoder itself needs no NIO
// (the fuzzers compile it alone).

import NIOCore

extension ResponseEncoder {
    /// The bytes of `actionText(action, frame:)` as an answer, appended to `buffer` in
    /// place: the server's path, which so builds no intermediate array per answer. A
    /// refusal's text is cut for the reply Postfix makes of it for `request`.
    public static func encode(_ action: PolicyAction, for request: PolicyRequest?, into buffer: inout ByteBuffer) {
        switch action {
        case .prepend(let header):
            // The common long answer (a Received-SPF header): no joined String in between.
            write("action=PREPEND ", sanitise(header, limit: maxHeaderLine), into: &buffer)
        default:
            write("action=", actionText(action, for: request), into: &buffer)
        }
    }

    /// `head`, `text` and the empty line that ends the answer, in one copy each.
    private static func write(_ head: StaticString, _ text: String, into buffer: inout ByteBuffer) {
        Octets.with(text) { body in
            let total = head.utf8CodeUnitCount + body.count + 2
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { out in
                let base = out.baseAddress!
                base.copyMemory(from: head.utf8Start, byteCount: head.utf8CodeUnitCount)
                if let source = body.baseAddress {
                    (base + head.utf8CodeUnitCount).copyMemory(from: source, byteCount: body.count)
                }
                base.storeBytes(of: UInt16(0x0A0A), toByteOffset: total - 2, as: UInt16.self)
                return total
            }
        }
    }
}
