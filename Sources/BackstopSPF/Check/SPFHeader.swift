// Received-SPF (RFC 7208 §9.1) and Authentication-Results (RFC 8601) header lines, built
// by appending octets (this runs for every accepted recipient). The values come from the
// SMTP client and its DNS: a value that is not a dot-atom is quoted, a comment cannot be
// unbalanced, and the response encoder removes control characters. It decides nothing.

public enum SPFHeader {
    public static func receivedSPF(_ outcome: SPFOutcome, receiver: String) -> String {
        var out = Builder()
        let query = outcome.query
        let mailbox = query.checkedMailbox
        out.literal("Received-SPF: ")
        out.literal(outcome.result.word)
        out.literal(" (")
        out.comment(outcome, mailbox: mailbox, receiver: receiver)
        out.literal(") client-ip=")
        out.value(query.clientAddress)
        out.literal("; envelope-from=")
        out.quoted(mailbox)
        out.literal(";")
        if !query.helo.isEmpty {
            out.literal(" helo=")
            out.value(query.helo)
            out.literal(";")
        }
        out.literal(" receiver=")
        out.value(receiver)
        out.literal(query.identity == .helo ? "; identity=helo" : "; identity=mailfrom")
        out.literal(";")
        if let mechanism = outcome.mechanism {
            out.literal(" mechanism=")
            out.quoted(mechanism)
            out.literal(";")
        }
        return out.string
    }

    public static func authenticationResults(_ outcome: SPFOutcome, authservID: String) -> String {
        var out = Builder()
        out.literal("Authentication-Results: ")
        out.append(authservID)
        out.literal("; spf=")
        out.literal(outcome.result.word)
        if outcome.query.identity == .helo {
            out.literal(" smtp.helo=")
            out.value(outcome.query.helo)
        } else {
            out.literal(" smtp.mailfrom=")
            out.value(outcome.query.checkedMailbox)
        }
        return out.string
    }

    /// The comment of a Received-SPF line (without its parentheses).
    public static func comment(_ outcome: SPFOutcome, receiver: String) -> String {
        var out = Builder()
        out.comment(outcome, mailbox: outcome.query.checkedMailbox, receiver: receiver)
        return out.string
    }

    struct Builder {
        var bytes: [UInt8] = []

        init() { bytes.reserveCapacity(320) }

        var string: String { String(decoding: bytes, as: UTF8.self) }

        /// Appends a literal without looking at its characters.
        mutating func literal(_ text: StaticString) {
            bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        }

        /// Appends a string's octets in one copy.
        mutating func append(_ text: String) {
            var copy = text
            copy.withUTF8 { bytes.append(contentsOf: $0) }
        }

        /// A dot-atom stays as it is; anything else becomes a quoted-string.
        mutating func value(_ text: String) {
            var copy = text
            let atom = copy.withUTF8 { octets -> Bool in
                guard let first = octets.first, first != 0x2E, octets.last != 0x2E else { return false }
                for b in octets where !Builder.isAtomOctet(b) { return false }
                return true
            }
            if atom { append(text) } else { quoted(text) }
        }

        mutating func quoted(_ text: String) {
            bytes.append(0x22)
            let start = bytes.count
            append(text)
            if bytes[start...].contains(where: { $0 == 0x22 || $0 == 0x5C }) {
                let raw = bytes[start...]
                bytes.removeSubrange(start...)
                for b in raw {
                    if b == 0x22 || b == 0x5C { bytes.append(0x5C) }
                    bytes.append(b)
                }
            }
            bytes.append(0x22)
        }

        /// Text inside a comment: parentheses and backslashes become "_".
        mutating func commentText(_ text: String) {
            let start = bytes.count
            append(text)
            for i in start..<bytes.count where bytes[i] == 0x28 || bytes[i] == 0x29 || bytes[i] == 0x5C { bytes[i] = 0x5F }
        }

        static func isAtomOctet(_ b: UInt8) -> Bool {
            switch b {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
            case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2F, 0x3D, 0x3F, 0x5E, 0x5F, 0x60, 0x7B, 0x7C, 0x7D, 0x7E,
                 0x2E, 0x40, 0x3A: return true
            default: return false
            }
        }

        mutating func comment(_ outcome: SPFOutcome, mailbox: String, receiver: String) {
            let helo = outcome.query.identity == .helo
            commentText(receiver)
            literal(": ")
            func domainOf() {
                append(helo ? "domain " : "domain of ")
                commentText(helo ? outcome.query.helo : mailbox)
            }
            func ip() { commentText(outcome.query.clientAddress) }
            switch outcome.result {
            case .pass: domainOf(); literal(" designates "); ip(); literal(" as permitted sender")
            case .fail: domainOf(); literal(" does not designate "); ip(); literal(" as permitted sender")
            case .softfail: domainOf(); literal(" does not designate "); ip(); literal(" as permitted sender (transitioning)")
            case .neutral: ip(); literal(" is neither permitted nor denied by "); domainOf()
            case .none: domainOf(); literal(" does not designate permitted sender hosts")
            case .permerror: literal("permanent error in processing "); domainOf()
            case .temperror: literal("temporary error in processing "); domainOf()
            }
        }
    }
}
