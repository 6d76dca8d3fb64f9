// Turns a PolicyAction into the bytes Postfix reads: `action=…\n\n`. Every text is
// sanitised here, whatever its origin: control characters (CR, LF, NUL, …) become spaces,
// invalid UTF-8 becomes U+FFFD, and the result is cut at a UTF-8 boundary to SMTP's limits.

public enum ResponseEncoder {
    /// A reply line is at most 512 octets with its CRLF (RFC 5321 §4.5.3.1.5).
    public static let maxReplyLine = 510
    /// A header line is at most 998 octets without its CRLF (RFC 5322 §2.1.1).
    public static let maxHeaderLine = 998
    /// When the action has no code of its own Postfix adds "NNN X.Y.Z " (10 octets).
    static let postfixPrefix = 10

    public static func encode(_ action: PolicyAction) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        out.append(contentsOf: "action=".utf8)
        out.append(contentsOf: actionText(action).utf8)
        out.append(contentsOf: "\n\n".utf8)
        return out
    }

    /// The part after `action=`, sanitised and cut. `frame` is what Postfix adds around a
    /// refusal's text beyond its codes (`refusalFrame`; 0 when there is no request), so
    /// that the SMTP reply line stays within 512 octets.
    public static func actionText(_ action: PolicyAction, frame: Int = 0) -> String {
        switch action {
        case .dunno: return "DUNNO"
        case .ok: return "OK"
        case .reply(let code, let enhanced, let text):
            var head = String(code)
            if let enhanced { head += " " + sanitise(enhanced, limit: 11) }
            // Without a status code of its own, Postfix adds its default one ("5.7.1 ").
            let prefix = enhanced == nil ? postfixPrefix : head.utf8.count + 1
            let body = sanitise(text, limit: max(0, maxReplyLine - prefix - frame))
            return body.isEmpty ? head : head + " " + body
        case .prepend(let header):
            return "PREPEND " + sanitise(header, limit: maxHeaderLine)
        default:
            let keyword = action.keyword
            guard let text = action.text else { return keyword }
            let framed = action.isRefusal ? frame : 0
            var limit = max(0, maxReplyLine - postfixPrefix - framed)
            // An enhanced status code leading the text is kept whatever the room: without it
            // Postfix sends its default (5.7.1 for REJECT), and "5.1.1 User unknown" would
            // no longer say the mailbox does not exist.
            if framed > 0, let status = text.split(separator: " ", maxSplits: 1).first, PolicyAction.isEnhancedStatus(status) {
                limit = max(limit, status.utf8.count)
            }
            let body = sanitise(text, limit: limit)
            return body.isEmpty ? keyword : keyword + " " + body
        }
    }

    /// Replaces control characters with spaces, collapses the leading/trailing blanks,
    /// and cuts to at most `limit` octets without splitting a UTF-8 sequence.
    public static func sanitise(_ text: String, limit: Int) -> String {
        // Most texts (DSNs, Received-SPF headers) are printable ASCII that fits: nothing to
        // replace or cut, so only the trimming below applies. This skips the per-scalar copy.
        // 0: needs the general path; 1: plain, with a space at either end; 2: as it is.
        let plain = Octets.with(text) { octets -> Int in
            guard octets.count <= limit && isPrintableASCII(octets) else { return 0 }
            guard let first = octets.first, let last = octets.last else { return 2 }
            return first == UInt8(ascii: " ") || last == UInt8(ascii: " ") ? 1 : 2
        }
        if plain == 2 { return text }
        if plain == 1 { return text.trimmingSpaces }
        return sanitiseScalars(text, limit: limit)
    }

    /// True when every octet is printable ASCII (0x20...0x7E): eight octets per step.
    static func isPrintableASCII(_ octets: UnsafeRawBufferPointer) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        // A high bit marks an octet below 0x20 (after subtracting 0x20 from each), one of
        // 0x7F or more (after adding 1), or one of 0x80 or more; a borrow or carry can only
        // start at such an octet, so a word without one has no false alarm.
        return !ASCII.anyWord(octets, { word in ((word &- ones &* 0x20) | (word &+ ones) | word) & highs != 0 },
                              orOctet: { $0 < 0x20 || $0 > 0x7E })
    }

    /// The general path of `sanitise`, scalar by scalar (tests compare the two).
    static func sanitiseScalars(_ text: String, limit: Int) -> String {
        var scalars = String.UnicodeScalarView()
        var octets = 0
        for scalar in text.unicodeScalars {
            let clean: Unicode.Scalar = (scalar.value < 0x20 || scalar.value == 0x7F
                || (0x80...0x9F).contains(scalar.value)
                || scalar.value == 0x2028 || scalar.value == 0x2029) ? " " : scalar
            let size = UTF8.width(clean)
            if octets + size > limit { break }
            scalars.append(clean)
            octets += size
        }
        return String(scalars).trimmingSpaces
    }
}
