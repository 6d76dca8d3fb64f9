// Received-SPF (RFC 7208 §9.1) and Authentication-Results (RFC 8601) header lines, built
// by writing octets into one String's storage, sized beforehand (this runs for every
// accepted message). The values come from the SMTP client and its DNS: a value that is not
// a dot-atom is quoted, a comment cannot be unbalanced, a line that would pass 998 octets
// leaves out its optional parts instead of being cut, and the response encoder removes
// control characters. It decides nothing.

import BackstopCore

public enum SPFHeader {
    /// The receiver's name (spf.receiver) as a Received-SPF line writes it: in the
    /// receiver= field (a dot-atom as it is, anything else quoted) and in the comment. Made
    /// once per configuration: every line of a server has the same receiver.
    public struct Receiver: Sendable {
        let value: String
        let comment: String

        public init(_ name: String) {
            let octets = name.utf8.count
            value = Builder.build(capacity: 2 * octets + 2) { $0.value(name) }
            comment = Self.commentForm(name)
        }

        /// The name as a comment writes it (commentText's substitutions).
        static func commentForm(_ name: String) -> String {
            Builder.build(capacity: name.utf8.count) { $0.commentText(name) }
        }
    }

    public static func receivedSPF(_ outcome: SPFOutcome, receiver: String) -> String {
        receivedSPF(outcome, receiver: Receiver(receiver))
    }

    public static func receivedSPF(_ outcome: SPFOutcome, receiver: Receiver) -> String {
        // A header line holds at most 998 octets, and the response encoder would cut a longer
        // one anywhere (inside the comment, with the fields after it lost). The values are
        // the client's: when they make the line too long, the comment goes first (RFC 7208
        // §9.1 makes it optional), then the envelope-from and helo fields whose values are
        // long, so the line that remains is whole and its fields are right.
        // Last, when the client address as Postfix wrote it was long (an IPv6 zone): the
        // address itself, without the zone, which is what SPF checked.
        let full = receivedSPF(outcome, receiver: receiver, comment: true, longest: .max)
        if full.utf8.count <= ResponseEncoder.maxHeaderLine { return full }  // every ordinary line
        var plain = outcome
        if let client = outcome.query.client {
            plain.query = SPFQuery(clientAddress: "\(client)", sender: outcome.query.sender, helo: outcome.query.helo,
                                   identity: outcome.query.identity, parsed: client)
        }
        let tries: [(SPFOutcome, Bool, Int)] = [(outcome, false, .max), (outcome, false, longValue),
                                                (outcome, false, 0), (plain, false, longValue), (plain, false, 0)]
        var line = ""
        for (candidate, comment, longest) in tries {
            line = receivedSPF(candidate, receiver: receiver, comment: comment, longest: longest)
            if line.utf8.count <= ResponseEncoder.maxHeaderLine { break }
        }
        return line
    }

    /// A Received-SPF line too long without its comment keeps the envelope-from and helo
    /// values of at most this many octets (and then none).
    static let longValue = 255

    /// `longest`: envelope-from and helo values longer than this are left out.
    static func receivedSPF(_ outcome: SPFOutcome, receiver: Receiver, comment: Bool, longest: Int) -> String {
        let query = outcome.query
        let mailbox = query.checkedMailbox
        let helo = heloForHeader(query.helo)
        // Every value at most three times over (once in the comment, once quoted: two
        // octets for one at worst), the literals well under 256. An A-label may be longer
        // than the U-label it stands for: the longer of the two counts.
        var values = receiver.value.utf8.count + mailbox.utf8.count + query.clientAddress.utf8.count
        values += max(query.helo.utf8.count, helo?.utf8.count ?? 0)
        values += outcome.mechanism?.utf8.count ?? 0
        return Builder.build(capacity: 256 + 3 * values) { out in
            out.literal("Received-SPF: ")
            out.literal(outcome.result.word)
            if comment {
                out.literal(" (")
                out.comment(outcome, mailbox: mailbox, receiver: receiver.comment, helo: helo ?? query.helo)
                out.literal(")")
            }
            out.literal(" client-ip=")
            out.value(query.clientAddress)
            out.literal(";")
            if mailbox.utf8.count <= longest, mailboxFitsHeader(mailbox) {
                out.literal(" envelope-from=")
                out.quoted(mailbox)
                out.literal(";")
            }
            if let helo, !helo.isEmpty, helo.utf8.count <= longest {
                out.literal(" helo=")
                out.value(helo)
                out.literal(";")
            }
            out.literal(" receiver=")
            out.append(receiver.value)
            out.literal(query.identity == .helo ? "; identity=helo" : "; identity=mailfrom")
            out.literal(";")
            if let mechanism = outcome.mechanism {
                out.literal(" mechanism=")
                out.quoted(mechanism)
                out.literal(";")
            }
        }
    }

    public static func authenticationResults(_ outcome: SPFOutcome, authservID: String) -> String {
        let line = authenticationResults(outcome, authservID: authservID, property: true)
        // Too long for a header line (a client's long sender): without the property, which
        // RFC 8601 allows, rather than a value the encoder would cut short.
        return line.utf8.count <= ResponseEncoder.maxHeaderLine ? line : authenticationResults(outcome, authservID: authservID, property: false)
    }

    static func authenticationResults(_ outcome: SPFOutcome, authservID: String, property: Bool) -> String {
        let query = outcome.query
        let helo = heloForHeader(query.helo)
        let values = authservID.utf8.count + (helo?.utf8.count ?? 0) + query.checkedMailbox.utf8.count
        return Builder.build(capacity: 128 + 2 * values) { out in
            out.literal("Authentication-Results: ")
            out.append(authservID)
            out.literal("; spf=")
            out.literal(outcome.result.word)
            if !property { return }
            if query.identity == .helo {
                // A HELO that is 8-bit text and no domain name: the property is left out.
                guard let helo else { return }
                out.literal(" smtp.helo=")
                out.propertyValue(helo)
            } else {
                guard mailboxFitsHeader(query.checkedMailbox) else { return }
                out.literal(" smtp.mailfrom=")
                out.propertyValue(query.checkedMailbox)
            }
        }
    }

    /// The HELO name as a header field carries it: as the client wrote it when it is ASCII;
    /// a host name in U-labels in its A-label form (the same name, and the one SPF looked
    /// up); nil for other 8-bit text, which is no host name and which a header of a message
    /// that is not SMTPUTF8 cannot carry: the field is left out rather than written raw.
    static func heloForHeader(_ helo: String) -> String? {
        if ASCII.check(helo) { return helo }
        // A host name is at most 253 octets, and a code point at most 4 octets of UTF-8:
        // longer text is no host name and is not converted at all.
        guard helo.utf8.count <= 4 * 253, let ascii = DomainName.asciiForm(helo), ascii.utf8.count <= 253,
              isHostName(ascii) else { return nil }
        return ascii
    }

    /// Letters, digits and hyphens in dot-separated labels (RFC 1123), no label empty.
    static func isHostName(_ name: String) -> Bool {
        Octets.with(name) { isHostName($0) }
    }

    static func isHostName(_ octets: UnsafeRawBufferPointer) -> Bool {
        var label = 0
        for b in octets {
            if b == UInt8(ascii: ".") {
                if label == 0 { return false }
                label = 0
            } else if (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "-") || (b >= 0x41 && b <= 0x5A) {
                label += 1
            } else {
                return false
            }
        }
        return label > 0
    }

    /// Whether the checked mailbox can be a header field: its domain is ASCII (a domain in
    /// U-labels was converted to A-labels when the query was made, so an 8-bit domain here is
    /// no domain name). An 8-bit local part (SMTPUTF8, RFC 6532) is written as it is.
    static func mailboxFitsHeader(_ mailbox: String) -> Bool {
        Octets.with(mailbox) { octets in
            // Only the domain after the last "@" must be ASCII: when the whole mailbox is
            // (the usual case), no search for it.
            if ASCII.check(octets) { return true }
            guard let at = octets.lastIndex(of: UInt8(ascii: "@")) else { return false }
            return ASCII.check(UnsafeRawBufferPointer(rebasing: octets[(at + 1)...]))
        }
    }

    /// The comment of a Received-SPF line (without its parentheses).
    public static func comment(_ outcome: SPFOutcome, receiver: String) -> String {
        let query = outcome.query
        let helo = heloForHeader(query.helo) ?? query.helo
        let values = receiver.utf8.count + query.checkedMailbox.utf8.count + query.clientAddress.utf8.count + helo.utf8.count
        return Builder.build(capacity: 128 + values) { out in
            // Only the receiver's comment form: Receiver would also make its quoted form.
            out.comment(outcome, mailbox: query.checkedMailbox, receiver: Receiver.commentForm(receiver), helo: helo)
        }
    }

    /// Writes into a String's uninitialised storage; `build`'s capacity must cover what is
    /// written (the writers trap rather than write past it).
    struct Builder {
        let buffer: UnsafeMutableBufferPointer<UInt8>
        var count = 0

        static func build(capacity: Int, _ body: (inout Builder) -> Void) -> String {
            String(unsafeUninitializedCapacity: capacity) { buffer in
                var builder = Builder(buffer: buffer)
                body(&builder)
                return builder.count
            }
        }

        @inline(__always)
        private mutating func write(_ octets: UnsafeRawBufferPointer) {
            precondition(octets.count <= buffer.count - count, "SPFHeader capacity")
            guard let source = octets.baseAddress, !octets.isEmpty else { return }
            (buffer.baseAddress! + count).initialize(from: source.assumingMemoryBound(to: UInt8.self), count: octets.count)
            count += octets.count
        }

        @inline(__always)
        private mutating func write(_ octet: UInt8) {
            precondition(count < buffer.count, "SPFHeader capacity")
            buffer[count] = octet
            count += 1
        }

        /// Appends a literal without looking at its characters.
        @inline(__always)
        mutating func literal(_ text: StaticString) {
            write(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        }

        /// Appends a string's octets in one copy.
        mutating func append(_ text: String) {
            Octets.with(text) { write($0) }
        }

        /// A Received-SPF value (RFC 7208 §9.1: dot-atom or quoted-string): a dot-atom stays
        /// as it is; anything else (an IPv6 address, with its ":") becomes a quoted-string.
        mutating func value(_ text: String) {
            Octets.with(text) { octets in
                if DotAtom.check(octets) { write(octets) } else { quoted(octets) }
            }
        }

        /// An Authentication-Results property value (RFC 8601 §2.2 pvalue): a domain name,
        /// or a dot-atom local part "@" a domain name, stays as it is; anything else becomes a
        /// quoted-string.
        mutating func propertyValue(_ text: String) {
            let plain = Octets.with(text) { all -> Bool in
                guard let at = all.lastIndex(of: 0x40) else { return SPFHeader.isHostName(all) }
                return DotAtom.check(UnsafeRawBufferPointer(rebasing: all[..<at]))
                    && SPFHeader.isHostName(UnsafeRawBufferPointer(rebasing: all[(at + 1)...]))
            }
            if plain { append(text) } else { quoted(text) }
        }

        mutating func quoted(_ text: String) {
            Octets.with(text) { quoted($0) }
        }

        private mutating func quoted(_ octets: UnsafeRawBufferPointer) {
            write(0x22)
            // Most values need no escape: one copy (8-bit octets go as they are).
            if !ASCII.contains(0x22, 0x5C, 0x5C, eightBit: false, in: octets) {
                write(octets)
            } else {
                for b in octets {
                    if b == 0x22 || b == 0x5C { write(0x5C) }
                    write(b)
                }
            }
            write(0x22)
        }

        /// Text inside a comment: parentheses and backslashes become "_", 8-bit octets "?"
        /// (a comment is for people; the fields carry the values).
        mutating func commentText(_ text: String) {
            Octets.with(text) { octets in
                let start = count
                write(octets)
                // The usual text (an address, a host name) has none of them: eight at a time.
                if !ASCII.contains(0x28, 0x29, 0x5C, eightBit: true, in: octets) { return }
                for i in start..<count {
                    let b = buffer[i]
                    if b == 0x28 || b == 0x29 || b == 0x5C { buffer[i] = 0x5F } else if b >= 0x80 { buffer[i] = 0x3F }
                }
            }
        }

        /// `receiver`: the receiver's name as a comment writes it (Receiver.comment); `helo`:
        /// the HELO name as the header shows it (heloForHeader's, or as written).
        mutating func comment(_ outcome: SPFOutcome, mailbox: String, receiver: String, helo heloName: String) {
            let helo = outcome.query.identity == .helo
            append(receiver)
            literal(": ")
            func domainOf() {
                if helo { literal("domain ") } else { literal("domain of ") }
                commentText(helo ? heloName : mailbox)
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
