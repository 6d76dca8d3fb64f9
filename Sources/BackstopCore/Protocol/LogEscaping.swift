// Escaping for text that came from outside before it is written to a log line, so a
// client cannot forge log lines or terminal escapes. Not used for the wire (see ResponseEncoder).

public enum LogEscaping {
    /// The most octets one escaped value takes in a log line (before its "…"): a client's
    /// value of escapes (`\u{202E}` is 8 octets for one character) cannot grow a decision
    /// line past what syslog daemons keep (rsyslog cuts at 8 KiB), and the fields after it
    /// (check, action, reason) are not lost.
    public static let maxFieldOctets = 1024

    /// Backslash-escapes quotes, backslashes and control characters; keeps printable UTF-8.
    /// At most `limit` octets of escaped text, then "…".
    public static func escape(_ text: String, limit: Int = maxFieldOctets) -> String {
        var out = ""
        var octets = 0
        for scalar in text.unicodeScalars {
            let piece: String?
            switch scalar {
            case "\"": piece = "\\\""
            case "\\": piece = "\\\\"
            case "\n": piece = "\\n"
            case "\r": piece = "\\r"
            case "\t": piece = "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value) {
                    piece = "\\x" + String(scalar.value, radix: 16, uppercase: true).leftPadded(to: 2)
                } else if LogEscaping.isLayoutControl(scalar.value) {
                    piece = "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
                } else {
                    piece = nil
                }
            }
            let size = piece?.utf8.count ?? UTF8.width(scalar)
            if octets + size > limit { out += "…"; break }
            octets += size
            if let piece { out += piece } else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    /// Scalars that break or reorder a line in viewers that follow Unicode (line and
    /// paragraph separators, bidirectional marks, embeddings, overrides and isolates, the
    /// byte order mark): escaped like control characters, so a value cannot fake a line or
    /// move the fields after it.
    static func isLayoutControl(_ value: UInt32) -> Bool {
        switch value {
        case 0x061C, 0x200E, 0x200F, 0x2028...0x202E, 0x2066...0x2069, 0xFEFF: true
        default: false
        }
    }

    /// A value for a key=value log line: quoted when it holds a space, quote or is empty.
    public static func field(_ text: String) -> String {
        let escaped = escape(text)
        if escaped.isEmpty || escaped.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" }) {
            return "\"" + escaped + "\""
        }
        return escaped
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
