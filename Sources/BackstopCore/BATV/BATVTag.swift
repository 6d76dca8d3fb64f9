// BATV tags in the prvs form of draft-levine-smtp-batv-01: making one for an address,
// finding one in an address, and checking one against a keyring. Pure functions of their
// inputs (the day is passed in); keys, files and the check live elsewhere.
//
//   prvs=KDDDSSSSSS=local@domain    K key number 0-9, DDD expiry day (days since the epoch,
//                                   mod 1000), SSSSSS first 3 bytes of HMAC-SHA1(key, KDDD + address)
//   prvs=local=KDDDSSSSSS@domain    the reversed order some senders used; accepted, never made
//
// Signing and verifying (the HMAC) are in BATVTag+HMAC.swift, so that this file, which
// reads attacker text, builds without swift-crypto for the fuzzer.

import Foundation

/// A tag found in an address.
public struct BATVTaggedAddress: Sendable, Equatable {
    public var keyNumber: Int
    public var expiryDay: Int
    /// The six hex digits, lowercased.
    public var signature: String
    /// The address without its tag: local@domain.
    public var address: String
}

/// What a tag is worth.
public enum BATVVerification: Sendable, Equatable {
    case valid(keyNumber: Int, daysLeft: Int)
    case noTag
    case badSignature
    case expired
    case unknownKey

    /// The word used in logs, metrics and the CLI.
    public var label: String {
        switch self {
        case .valid: "valid"
        case .noTag: "no_tag"
        case .badSignature: "bad_signature"
        case .expired: "expired"
        case .unknownKey: "unknown_key"
        }
    }
}

public enum BATVTag {
    /// A local part may be 64 octets (RFC 5321 §4.5.3.1.1); a tag adds 16.
    public static let maxLocalPartOctets = 64
    static let tagOverhead = 16  // "prvs=" + 10 + "="
    /// The longest `lifetime` (a tag's day is kept mod 1000, and a bounce rarely comes back
    /// after a month); also how far ahead a tag's expiry may be and still be ours.
    public static let maxLifetimeDays = 30

    /// Days since the epoch (UTC) of a wall-clock time in seconds.
    public static func day(unixSeconds: Int64) -> Int {
        Int(unixSeconds >= 0 ? unixSeconds / 86_400 : (unixSeconds - 86_399) / 86_400)
    }

    /// Today, by the system's wall clock: a tag's day is a calendar day, so this is the one
    /// place BATV reads the wall clock.
    public static func today() -> Int { day(unixSeconds: Int64(time(nil))) }

    /// The tag in `address`, in either order, or nil when it has none. The "prvs=" prefix
    /// and the hex digits are matched without regard to case. A local part left with an "@"
    /// in it (`prvs=@x=TAG@domain`) is no tag: signing never makes one (quoted local parts
    /// are not signed), so it is a broken tag, like any other.
    public static func parse(_ address: String) -> BATVTaggedAddress? {
        let bytes = Array(address.utf8)
        guard let at = bytes.lastIndex(of: UInt8(ascii: "@")), at > 16,
              bytes[0..<5].map(ASCII.lowercase) == Array("prvs=".utf8) else { return nil }
        let local = bytes[5..<at]
        let domain = bytes[at...]
        let untagged: ArraySlice<UInt8>, tag: ArraySlice<UInt8>
        if isTag(local.prefix(10)), local.count > 11, local[local.startIndex + 10] == UInt8(ascii: "=") {
            (tag, untagged) = (local.prefix(10), local.dropFirst(11))
        } else if isTag(local.suffix(10)), local.count > 11, local[local.endIndex - 11] == UInt8(ascii: "=") {
            (tag, untagged) = (local.suffix(10), local.dropLast(11))
        } else {
            return nil
        }
        return untagged.contains(UInt8(ascii: "@")) ? nil : tagged(tag, untagged, domain)
    }

    /// Whether `address` can carry a tag: its local part is a dot-atom (RFC 5322 §3.2.3,
    /// octets over 0x7F allowed as RFC 6531 does), the form Postfix writes unquoted, and
    /// with a tag it stays within the 64 octets RFC 5321 allows. Signing makes tags only for
    /// these; a bounce to any other address of ours comes back untagged, as it left.
    public static func signable(_ address: String) -> Bool {
        Octets.with(address) { all in
            guard let at = all.lastIndex(of: UInt8(ascii: "@")), at + tagOverhead <= maxLocalPartOctets else { return false }
            return DotAtom.check(UnsafeRawBufferPointer(rebasing: all[..<at]), utf8: true)
        }
    }

    /// True when `address` carries a prvs= prefix at all (a tag of any form, even a broken
    /// one): such an address is never signed again.
    public static func looksTagged(_ address: String) -> Bool {
        let bytes = address.utf8.prefix(5)
        return bytes.count == 5 && bytes.map(ASCII.lowercase) == Array("prvs=".utf8)
    }

    // MARK: helpers

    static func threeDigits(_ day: Int) -> String {
        let d = ((day % 1000) + 1000) % 1000
        return d < 10 ? "00\(d)" : d < 100 ? "0\(d)" : "\(d)"
    }

    /// K DDD SSSSSS: four digits, then six hex digits (either case).
    static func isTag(_ t: ArraySlice<UInt8>) -> Bool {
        guard t.count == 10 else { return false }
        for (i, b) in t.enumerated() {
            let c = ASCII.lowercase(b)
            let digit = c >= 0x30 && c <= 0x39
            if i < 4 ? !digit : !(digit || (c >= 0x61 && c <= 0x66)) { return false }
        }
        return true
    }

    static func tagged(_ tag: ArraySlice<UInt8>, _ local: ArraySlice<UInt8>, _ domain: ArraySlice<UInt8>) -> BATVTaggedAddress {
        let t = Array(tag)
        return BATVTaggedAddress(keyNumber: Int(t[0] - 0x30),
                                 expiryDay: Int(t[1] - 0x30) * 100 + Int(t[2] - 0x30) * 10 + Int(t[3] - 0x30),
                                 signature: String(decoding: t[4...].map(ASCII.lowercase), as: UTF8.self),
                                 address: String(decoding: Array(local) + Array(domain), as: UTF8.self))
    }
}
