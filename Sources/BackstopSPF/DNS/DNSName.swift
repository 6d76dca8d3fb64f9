// A DNS name as the wire carries it: labels of octets, at most 63 each and 255 in all
// (RFC 1035 §2.3.4), compared without regard to ASCII case. A label may hold any octet,
// a dot included, so a name is never confused with one that has more labels. Text forms
// are for people and for libspf2; the labels are the truth. It does not resolve anything.

/// A DNS name of at most 255 octets in wire form.
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    /// Uncompressed wire form: length-prefixed labels and the final zero octet.
    public let wire: [UInt8]

    public static let maxWireLength = 255
    public static let maxLabelLength = 63

    /// A name from wire form that is already checked (DNSMessage's decoder builds it).
    init(checkedWire wire: [UInt8]) { self.wire = wire }

    /// Labels as given: each must be 1–63 octets, the whole ≤ 255 in wire form.
    public init?<S: Sequence>(labels: S) where S.Element: Collection, S.Element.Element == UInt8 {
        var out: [UInt8] = []
        for label in labels {
            guard (1...DNSName.maxLabelLength).contains(label.count) else { return nil }
            out.append(UInt8(label.count))
            out.append(contentsOf: label)
            guard out.count < DNSName.maxWireLength else { return nil }
        }
        guard !out.isEmpty else { return nil }
        out.append(0)
        wire = out
    }

    /// A name written as text, split at every dot with no escapes (SPF domain-specs and
    /// the query names Backstop builds); one trailing dot is allowed. nil when a label is
    /// empty or too long, or the name is over 255 octets. One pass over the octets (this
    /// runs for every evaluation): each label's length octet is kept open and filled in at
    /// the dot that ends it; a trailing dot's open octet becomes the final zero.
    public init?(text: some StringProtocol) {
        var out: [UInt8] = [0]
        out.reserveCapacity(min(text.utf8.count + 2, DNSName.maxWireLength + 1))
        var open = 0, label = 0
        for b in text.utf8 {
            if b == UInt8(ascii: ".") {
                guard label > 0 else { return nil }
                out[open] = UInt8(label)
                open = out.count
                out.append(0)
                label = 0
            } else {
                label += 1
                guard label <= DNSName.maxLabelLength else { return nil }
                out.append(b)
            }
            guard out.count <= DNSName.maxWireLength else { return nil }
        }
        if label > 0 {
            out[open] = UInt8(label)
            out.append(0)
        }
        // Empty, or only a dot; a trailing dot left its open octet last, as the final zero.
        guard out.count > 1, out.count <= DNSName.maxWireLength else { return nil }
        wire = out
    }

    /// The labels, in order.
    public var labels: [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        var i = 0
        while i < wire.count, wire[i] != 0 {
            let length = Int(wire[i])
            out.append(wire[(i + 1)..<(i + 1 + length)])
            i += 1 + length
        }
        return out
    }

    public var labelCount: Int { labels.count }

    /// Octets of the text form without escapes (labels and the dots between them).
    public var textLength: Int { max(0, wire.count - 2) }

    /// True when every label is letters, digits, hyphens or underscores: such a name reads
    /// back to the same labels from its text, and libspf2 may be given it literally.
    public var isPlain: Bool {
        var i = 0
        while i < wire.count, wire[i] != 0 {
            let length = Int(wire[i])
            for b in wire[(i + 1)..<(i + 1 + length)] {
                guard DNSName.isPlainOctet(b) else { return false }
            }
            i += 1 + length
        }
        return true
    }

    static func isPlainOctet(_ b: UInt8) -> Bool {
        (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x5F
    }

    /// Dotted text without the final dot; a dot, backslash or unprintable octet inside a
    /// label is written \DDD (RFC 1035 §5.1), so the text is never ambiguous.
    public var description: String {
        let text = joined { b, out in
            if b <= 0x20 || b >= 0x7F || b == UInt8(ascii: ".") || b == UInt8(ascii: "\\") {
                out.append(UInt8(ascii: "\\"))
                out.append(0x30 + b / 100)
                out.append(0x30 + (b / 10) % 10)
                out.append(0x30 + b % 10)
            } else {
                out.append(b)
            }
            return true
        }
        return String(decoding: text ?? [], as: UTF8.self)
    }

    /// The labels joined by dots, `write` appending each octet; nil as soon as `write` says
    /// an octet cannot be written.
    private func joined(_ write: (UInt8, inout [UInt8]) -> Bool) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(wire.count)
        var i = 0
        while i < wire.count, wire[i] != 0 {
            if !out.isEmpty { out.append(UInt8(ascii: ".")) }
            let length = Int(wire[i])
            for b in wire[(i + 1)..<(i + 1 + length)] {
                guard write(b, &out) else { return nil }
            }
            i += 1 + length
        }
        return out
    }

    /// The name as a record's `<domain>` and `%{d}` read it: the labels' own octets joined by
    /// dots, 8-bit octets included (a name built from `%{l}` of an SMTPUTF8 sender), so that
    /// `init(text:)` gives back the same name. A label holding a dot, a backslash, a blank or
    /// a control octet cannot be written so: then the escaped `description`.
    public var macroText: [UInt8] {
        let raw = joined { b, out in
            guard b > 0x20, b != 0x7F, b != UInt8(ascii: "."), b != UInt8(ascii: "\\") else { return false }
            out.append(b)
            return true
        }
        return raw ?? Array(description.utf8)
    }

    /// The lower-case text form when the name is plain (see `isPlain`), else nil.
    public var plainText: String? {
        guard isPlain else { return nil }
        return description.lowercased()
    }

    /// True when `self` is `other` or a name below it.
    public func isSubdomain(of other: DNSName) -> Bool {
        guard wire.count >= other.wire.count else { return false }
        // Walk label boundaries of self until the remaining suffix has other's length.
        var i = 0
        while wire.count - i > other.wire.count {
            i += 1 + Int(wire[i])
        }
        guard wire.count - i == other.wire.count else { return false }
        return DNSName.equalFolded(wire[i...], other.wire[...])
    }

    public static func == (a: DNSName, b: DNSName) -> Bool {
        a.wire.count == b.wire.count && equalFolded(a.wire[...], b.wire[...])
    }

    /// Eight octets to a word, folded together: one `combine` and a few operations per
    /// word (a name is hashed at every DNS cache lookup; octet by octet it cost ~1,700
    /// instructions per fresh evaluation).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(wire.count)
        wire.withUnsafeBytes { raw in
            var i = 0
            while i + 8 <= raw.count {
                hasher.combine(DNSName.fold8(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
                i += 8
            }
            guard i < raw.count else { return }
            var tail: UInt64 = 0
            for k in i..<raw.count { tail |= UInt64(raw[k]) << UInt64(8 * (k - i)) }
            hasher.combine(DNSName.fold8(tail))
        }
    }

    /// `fold` applied to each octet of a word at once: an octet from 0x41 to 0x5A gains 0x20.
    /// Adding to the low seven bits of each octet cannot carry into the next one.
    @inline(__always) static func fold8(_ x: UInt64) -> UInt64 {
        let low7 = x & 0x7F7F_7F7F_7F7F_7F7F
        let aboveZ = low7 &+ 0x2525_2525_2525_2525    // top bit set where the octet is over 0x5A
        let atLeastA = low7 &+ 0x3F3F_3F3F_3F3F_3F3F  // top bit set where it is 0x41 or more
        let upper = atLeastA & ~aboveZ & ~x & 0x8080_8080_8080_8080
        return x | (upper >> 2)
    }

    @inline(__always) static func fold(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    static func equalFolded(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        var i = a.startIndex, j = b.startIndex
        while i < a.endIndex {
            if fold(a[i]) != fold(b[j]) { return false }
            i += 1
            j += 1
        }
        return true
    }

    /// The reverse-lookup name of an address: d.c.b.a.in-addr.arpa or the 32 nibbles.ip6.arpa.
    public static func reverse(_ octets: [UInt8]) -> DNSName {
        let hex = Array("0123456789abcdef".utf8)
        var labels: [[UInt8]] = []
        if octets.count == 4 {
            for b in octets.reversed() { labels.append(Array(String(b).utf8)) }
            labels += [Array("in-addr".utf8), Array("arpa".utf8)]
        } else {
            for b in octets.reversed() {
                labels.append([hex[Int(b & 0xF)]])
                labels.append([hex[Int(b >> 4)]])
            }
            labels += [Array("ip6".utf8), Array("arpa".utf8)]
        }
        return DNSName(labels: labels)!
    }
}
