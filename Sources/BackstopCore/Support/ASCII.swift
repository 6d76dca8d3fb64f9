// Whether octets are all ASCII (no high bit set), eight at a time: the common case of a
// request value, checked before anything handles the rare 8-bit one (an SMTPUTF8 address,
// a U-label HELO); and ASCII lowercasing of octets (addresses, domains and keys compared
// without case). It does not validate UTF-8 or look at control characters.

public enum ASCII {
    /// True when no octet is 0x80 or above.
    public static func check(_ octets: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        while i + 8 <= octets.count {
            if octets.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 { return false }
            i += 8
        }
        while i < octets.count {
            if octets[i] >= 0x80 { return false }
            i += 1
        }
        return true
    }

    /// The same for a string's UTF-8.
    public static func check(_ text: String) -> Bool {
        Octets.with(text) { check($0) }
    }

    /// `b` with A-Z made a-z; every other octet (8-bit ones included) as it is.
    @inline(__always)
    public static func lowercase(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    /// The same for every octet of `octets`, in place.
    public static func lowercase(_ octets: UnsafeMutableBufferPointer<UInt8>) {
        for i in octets.indices { octets[i] = lowercase(octets[i]) }
    }
}
