// SipHash-2-4 (Aumasson and Bernstein): a keyed 64-bit hash that gives the same value in
// every process for the same key and input, unlike Swift's Hasher, which is seeded anew in
// each process. The rate-limit memory store hashes its keys with it, so hashes saved in its
// state file are found again after a restart. Not a MAC for anything that leaves the host.

public struct SipHash24 {
    private var v0: UInt64, v1: UInt64, v2: UInt64, v3: UInt64

    public init(k0: UInt64, k1: UInt64) {
        v0 = k0 ^ 0x736f_6d65_7073_6575
        v1 = k1 ^ 0x646f_7261_6e64_6f6d
        v2 = k0 ^ 0x6c79_6765_6e65_7261
        v3 = k1 ^ 0x7465_6462_7974_6573
    }

    @inline(__always)
    private mutating func round() {
        v0 &+= v1; v1 = v1.rotatedLeft(13); v1 ^= v0; v0 = v0.rotatedLeft(32)
        v2 &+= v3; v3 = v3.rotatedLeft(16); v3 ^= v2
        v0 &+= v3; v3 = v3.rotatedLeft(21); v3 ^= v0
        v2 &+= v1; v1 = v1.rotatedLeft(17); v1 ^= v2; v2 = v2.rotatedLeft(32)
    }

    @inline(__always)
    private mutating func compress(_ m: UInt64) {
        v3 ^= m
        round()
        round()
        v0 ^= m
    }

    /// The hash of `bytes` preceded by the eight bytes of `prefix` (little-endian).
    public static func hash(k0: UInt64, k1: UInt64, prefix: UInt64, _ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var state = SipHash24(k0: k0, k1: k1)
        state.compress(prefix)
        let total = 8 + bytes.count
        var index = 0
        while index + 8 <= bytes.count {
            var m: UInt64 = 0
            for i in 0..<8 { m |= UInt64(bytes[index + i]) << UInt64(8 * i) }
            state.compress(m)
            index += 8
        }
        var last = UInt64(truncatingIfNeeded: total) << 56
        var shift: UInt64 = 0
        while index < bytes.count {
            last |= UInt64(bytes[index]) << shift
            shift += 8
            index += 1
        }
        state.compress(last)
        state.v2 ^= 0xFF
        state.round(); state.round(); state.round(); state.round()
        return state.v0 ^ state.v1 ^ state.v2 ^ state.v3
    }
}

extension UInt64 {
    @inline(__always)
    fileprivate func rotatedLeft(_ count: UInt64) -> UInt64 { self << count | self >> (64 - count) }
}
