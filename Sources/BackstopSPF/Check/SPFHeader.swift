// Received-SPF (RFC 7208 §9.1) and Authentication-Results (RFC 8601) header lines, built
// by appending octets (this runs for every accepted recipient). The values come from the
// SMTP client and its DNS: a value that is not a dot-atom is quoted, a comment cannot be
// unbalanced, and the response encoder removes control characters. It decides nothing.

public enum SPFHeader {
    public static func receivedSPF(_ outcome: SPFOutcome, receiver: String) -> String {
        var out = Builder()
        let query = outcome.query
        let mailbox = query.checkedMailbox
        out.append("Received-SPF: ")
        out.append(outcome.result.rawValue)
        out.append(" (")
        out.comment(outcome, mailbox: mailbox, receiver: receiver)
        out.append(") client-ip=")
        out.value(query.clientAddress)
        out.append("; envelope-from=")
        out.quoted(mailbox)
        out.append(";")
        if !query.helo.isEmpty {
            out.append(" helo=")
            out.value(query.helo)
            out.append(";")
        }
        out.append(" receiver=")
        out.value(receiver)
        out.append("; identity=")
        out.append(query.identity.rawValue)
        out.append(";")
        if let mechanism = outcome.mechanism {
            out.append(" mechanism=")
            out.quoted(mechanism)
            out.append(";")
        }
        return out.string
    }

    public static func authenticationResults(_ outcome: SPFOutcome, authservID: String) -> String {
        var out = Builder()
        out.append("Authentication-Results: ")
        out.append(authservID)
        out.append("; spf=")
        out.append(outcome.result.rawValue)
        if outcome.query.identity == .helo {
            out.append(" smtp.helo=")
            out.value(outcome.query.helo)
        } else {
            out.append(" smtp.mailfrom=")
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

        init() { bytes.reserveCapacity(256) }

        var string: String { String(decoding: bytes, as: UTF8.self) }

        mutating func append(_ text: String) { bytes.append(contentsOf: text.utf8) }

        /// A dot-atom stays as it is; anything else becomes a quoted-string.
        mutating func value(_ text: String) {
            let utf8 = text.utf8
            let atom = !utf8.isEmpty && utf8.first != 0x2E && utf8.last != 0x2E && utf8.allSatisfy(Builder.isAtomOctet)
            if atom { bytes.append(contentsOf: utf8) } else { quoted(text) }
        }

        mutating func quoted(_ text: String) {
            bytes.append(0x22)
            for b in text.utf8 {
                if b == 0x22 || b == 0x5C { bytes.append(0x5C) }
                bytes.append(b)
            }
            bytes.append(0x22)
        }

        /// Text inside a comment: parentheses and backslashes become "_".
        mutating func commentText(_ text: String) {
            for b in text.utf8 { bytes.append(b == 0x28 || b == 0x29 || b == 0x5C ? 0x5F : b) }
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
            append(": ")
            func domainOf() {
                append(helo ? "domain " : "domain of ")
                commentText(helo ? outcome.query.helo : mailbox)
            }
            func ip() { commentText(outcome.query.clientAddress) }
            switch outcome.result {
            case .pass: domainOf(); append(" designates "); ip(); append(" as permitted sender")
            case .fail: domainOf(); append(" does not designate "); ip(); append(" as permitted sender")
            case .softfail: domainOf(); append(" does not designate "); ip(); append(" as permitted sender (transitioning)")
            case .neutral: ip(); append(" is neither permitted nor denied by "); domainOf()
            case .none: domainOf(); append(" does not designate permitted sender hosts")
            case .permerror: append("permanent error in processing "); domainOf()
            case .temperror: append("temporary error in processing "); domainOf()
            }
        }
    }
}
