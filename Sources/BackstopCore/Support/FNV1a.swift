// FNV-1a, 64 bits: a fast, unkeyed hash that is the same in every process, for values that
// must be found again after a restart (rate-limit rule fingerprints, the state file's
// checksum). Not for keys an attacker chooses: those use SipHash24 with a secret key.

public enum FNV1a {
    public static func hash<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return h
    }
}
