// Whether octets are all ASCII (no high bit set), eight at a time: the common case of a
// request value, checked before anything handles the rare 8-bit one (an SMTPUTF8 address,
// a U-label HELO); whether text holds any of a few given octets, also eight at a time (the
// Received-SPF line's values, copied as they are when they hold none); and ASCII
// lowercasing of octets (addresses, domains and keys compared without case). It does not
// validate UTF-8 or look at control characters.

public enum ASCII {
    /// True when no octet is 0x80 or above.
    public static func check(_ octets: UnsafeRawBufferPointer) -> Bool {
        !anyWord(octets, { $0 & 0x8080_8080_8080_8080 != 0 }, orOctet: { $0 >= 0x80 })
    }

    /// The one scan behind the eight-at-a-time checks: true when `word` says so of some
    /// eight octets of `octets` read as one word (every octet is in a word read; the last
    /// word overlaps the one before it, so no octet is looked at alone), or, for text of
    /// fewer than eight octets, when `octet` says so of one of them. `word` must be exact
    /// for any eight octets of the text.
    @inlinable @inline(__always)
    public static func anyWord(_ octets: UnsafeRawBufferPointer, _ word: (UInt64) -> Bool,
                               orOctet octet: (UInt8) -> Bool) -> Bool {
        let count = octets.count
        guard count >= 8 else {
            for x in octets where octet(x) { return true }
            return false
        }
        var i = 0
        while i &+ 8 <= count {
            if word(octets.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { return true }
            i &+= 8
        }
        return i < count && word(octets.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self))
    }

    /// The same for a string's UTF-8.
    public static func check(_ text: String) -> Bool {
        Octets.with(text) { check($0) }
    }

    /// True when some octet of `word` is `octet`: a word with that octet's bits flipped has
    /// a zero octet, and the zero-octet test (subtract one from each octet, keep the high
    /// bits that were clear before) is exact about whether there is one.
    @inlinable @inline(__always)
    public static func has(_ octet: UInt8, in word: UInt64) -> Bool {
        let x = word ^ (0x0101_0101_0101_0101 &* UInt64(octet))
        return (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080 != 0
    }

    /// True when some octet of `octets` is `a`, `b` or `c`, or (with `eightBit`) 0x80 or
    /// above, eight at a time: for text that is usually copied as it is once this says no.
    @inlinable @inline(__always)
    public static func contains(_ a: UInt8, _ b: UInt8, _ c: UInt8, eightBit: Bool, in octets: UnsafeRawBufferPointer) -> Bool {
        anyWord(octets, { word in
            (eightBit && word & 0x8080_8080_8080_8080 != 0) || has(a, in: word) || has(b, in: word) || has(c, in: word)
        }, orOctet: { x in (eightBit && x >= 0x80) || x == a || x == b || x == c })
    }

    /// `b` with A-Z made a-z; every other octet (8-bit ones included) as it is.
    @inline(__always)
    public static func lowercase(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    /// The same for every octet of `octets`, in place.
    public static func lowercase(_ octets: UnsafeMutableBufferPointer<UInt8>) {
        for i in octets.indices { octets[i] = lowercase(octets[i]) }
    }
}
