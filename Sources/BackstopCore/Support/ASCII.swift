// Whether octets are all ASCII (no high bit set), eight at a time: the common case of a
// request value, checked before anything handles the rare 8-bit one (an SMTPUTF8 address,
// a U-label HELO). It does not validate UTF-8 or look at control characters.

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
}
