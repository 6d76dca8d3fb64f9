// Whether octets are a dot-atom (RFC 5322 §3.2.3): atoms of atext joined by single dots,
// the form an address's local part or a header value takes without quotes. Asked where
// Backstop must know whether text is written quoted: Received-SPF values, and the addresses
// BATV can sign. It quotes nothing and decides nothing.

public enum DotAtom {
    /// True when `octets` is a dot-atom. With `utf8`, octets over 0x7F count as atext too,
    /// as RFC 6531 allows in an SMTPUTF8 local part; without, a dot-atom is ASCII.
    public static func check(_ octets: UnsafeRawBufferPointer, utf8: Bool = false) -> Bool {
        guard let first = octets.first, first != 0x2E, octets.last != 0x2E else { return false }
        var previous: UInt8 = 0
        for b in octets {
            guard isAtomOctet(b) || (utf8 && b >= 0x80), !(b == 0x2E && previous == 0x2E) else { return false }
            previous = b
        }
        return true
    }

    /// atext (RFC 5322 §3.2.3) plus ".": one bit per ASCII octet, octets 0-63 and 64-127
    /// (SPFCheckTests checks the masks against the characters).
    static let atomLow: UInt64 = 0xA3FF_ECFA_0000_0000
    static let atomHigh: UInt64 = 0x7FFF_FFFF_C7FF_FFFE

    public static func isAtomOctet(_ b: UInt8) -> Bool {
        b < 64 ? (atomLow >> UInt64(b)) & 1 != 0 : b < 128 && (atomHigh >> UInt64(b - 64)) & 1 != 0
    }
}
