// An IPv4 or IPv6 address, parsed from what Postfix and DNS give, compared and masked
// without allocating. An IPv4-mapped IPv6 address (::ffff:192.0.2.1) is the IPv4 address
// it carries. Networks are CIDR.swift's. Glibc only, so the fuzzers can build it alone.

import Glibc

public enum IPAddress: Sendable, Hashable, CustomStringConvertible {
    case v4(UInt32)
    case v6(UInt64, UInt64)

    public init?(_ text: String) {
        // Postfix reports most clients as a plain dotted quad: parsed from the octets.
        if let parsed = text.utf8.withContiguousStorageIfAvailable({ IPAddress(dottedQuad: UnsafeRawBufferPointer($0)) }),
           let address = parsed {
            self = address
            return
        }
        var s = text
        if s.hasPrefix("[") && s.hasSuffix("]") { s = String(s.dropFirst().dropLast()) }
        if s.lowercased().hasPrefix("ipv6:") { s = String(s.dropFirst(5)) }
        if let zone = s.firstIndex(of: "%") { s = String(s[..<zone]) }
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, s, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        var hi: UInt64 = 0, lo: UInt64 = 0
        for i in 0..<8 { hi = hi << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { lo = lo << 8 | UInt64(bytes[i]) }
        // IPv4-mapped: treat as the IPv4 address it carries.
        if hi == 0, lo >> 32 == 0xFFFF {
            self = .v4(UInt32(truncatingIfNeeded: lo))
            return
        }
        self = .v6(hi, lo)
    }

    /// Parses a plain dotted-quad IPv4 address straight from request bytes (the hot path of
    /// rate-limit keys); nil for anything else, which the String initialiser then handles.
    /// Accepts exactly what inet_pton(AF_INET) accepts: four decimal parts 0–255 without
    /// leading zeros.
    public init?(dottedQuad bytes: UnsafeRawBufferPointer) {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        var leadingZero = false
        for byte in bytes {
            if byte >= 0x30 && byte <= 0x39 {
                if digits == 1 && leadingZero { return nil }
                if digits == 0 { leadingZero = byte == 0x30 }
                part = part * 10 + UInt32(byte - 0x30)
                digits += 1
                if digits > 3 || part > 255 { return nil }
            } else if byte == 0x2E {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part
                parts += 1
                part = 0
                digits = 0
            } else {
                return nil
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        self = .v4(value << 8 | part)
    }

    public var isV4: Bool { if case .v4 = self { true } else { false } }

    /// An address from 4 or 16 octets in network order (IPv4-mapped IPv6 becomes IPv4).
    public init?(octets: some Collection<UInt8>) {
        switch octets.count {
        case 4:
            self = .v4(octets.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            let hi = octets.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
            let lo = octets.suffix(8).reduce(0) { $0 << 8 | UInt64($1) }
            self = hi == 0 && lo >> 32 == 0xFFFF ? .v4(UInt32(truncatingIfNeeded: lo)) : .v6(hi, lo)
        default:
            return nil
        }
    }

    /// The address in network order: 4 octets or 16.
    public var octets: [UInt8] {
        switch self {
        case .v4(let a):
            return [UInt8(a >> 24), UInt8(a >> 16 & 0xFF), UInt8(a >> 8 & 0xFF), UInt8(a & 0xFF)]
        case .v6(let hi, let lo):
            var out: [UInt8] = []
            out.reserveCapacity(16)
            for word in [hi, lo] { for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) } }
            return out
        }
    }

    public var description: String {
        switch self {
        case .v4(let a):
            return "\(a >> 24).\(a >> 16 & 0xFF).\(a >> 8 & 0xFF).\(a & 0xFF)"
        case .v6(let hi, let lo):
            var addr = in6_addr()
            withUnsafeMutableBytes(of: &addr) { raw in
                for i in 0..<8 { raw[i] = UInt8(truncatingIfNeeded: hi >> (56 - 8 * i)) }
                for i in 0..<8 { raw[8 + i] = UInt8(truncatingIfNeeded: lo >> (56 - 8 * i)) }
            }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &addr, &buffer, socklen_t(buffer.count))
            let length = buffer.firstIndex(of: 0) ?? buffer.count
            return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// This address with all but the first `prefix` bits cleared.
    public func masked(to prefix: Int) -> IPAddress {
        switch self {
        case .v4(let a):
            let p = max(0, min(32, prefix))
            return .v4(p == 0 ? 0 : a & ~(UInt32.max >> UInt32(p)))
        case .v6(let hi, let lo):
            let p = max(0, min(128, prefix))
            if p <= 64 {
                return .v6(p == 0 ? 0 : hi & ~(UInt64.max >> UInt64(p)), 0)
            }
            return .v6(hi, p == 128 ? lo : lo & ~(UInt64.max >> UInt64(p - 64)))
        }
    }
}

