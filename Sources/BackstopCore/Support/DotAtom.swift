// Whether octets are a dot-atom (RFC 5322 §3.2.3): atoms of atext joined by single dots,
// the form an address's local part or a header value takes without quotes. Asked where
// Backstop must know whether text is written quoted: Received-SPF values, and the addresses
// BATV can sign. It quotes nothing and decides nothing.

public enum DotAtom {
    /// True when `octets` is a dot-atom. With `utf8`, octets over 0x7F count as atext too,
    /// as RFC 6531 allows in an SMTPUTF8 local part; without, a dot-atom is ASCII.
    public static func check(_ octets: UnsafeRawBufferPointer, utf8: Bool = false) -> Bool {
        let count = octets.count
        guard count > 0, let base = octets.baseAddress else { return false }
        let p = base.assumingMemoryBound(to: UInt8.self)
        if p[0] == 0x2E || p[count &- 1] == 0x2E { return false }
        var previousDot = false
        var i = 0
        while i < count {
            let b = p[i]
            i &+= 1
            if b == 0x2E {
                if previousDot { return false }
                previousDot = true
                continue
            }
            previousDot = false
            if b >= 0x80 {
                if utf8 { continue }
                return false
            }
            if ((b < 64 ? atomLow : atomHigh) >> UInt64(b & 63)) & 1 == 0 { return false }
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
