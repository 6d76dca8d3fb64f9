// String equality and hashing by UTF-8 octets. Swift's `==` on String is Unicode canonical
// equivalence: "é" written as one code point and as "e" plus a combining accent are one
// string to it, but two different mailboxes to DNS (an SPF macro expands the octets). A
// value that reaches DNS or a key as octets is compared, and hashed, here (hashed by
// octets too: with Swift's hash every spelling of one text hashes alike, and distinct keys
// with one hash are a collision flood). Not for text shown to people.

import Glibc

public enum Octets {
    /// Calls `body` with `text`'s UTF-8 octets where they are: a native String's storage, or
    /// a small one's copy on the stack. Unlike `var copy = text; copy.withUTF8`, it neither
    /// copies nor retains the string (an atomic increment and decrement per call, which on
    /// the request path added up). A string without contiguous UTF-8 (bridged, which Linux
    /// does not have) is copied once.
    @inlinable @inline(__always)
    public static func with<R>(_ text: String, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if let result = try text.utf8.withContiguousStorageIfAvailable({ try body(UnsafeRawBufferPointer($0)) }) {
            return result
        }
        var copy = text
        return try copy.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }

    /// True when `a` and `b` have the same UTF-8 octets.
    public static func equal(_ a: String, _ b: String) -> Bool {
        with(a) { x in
            with(b) { y in x.count == y.count && (x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0) }
        }
    }

    public static func equal(_ a: String?, _ b: String?) -> Bool {
        switch (a, b) {
        case (nil, nil): return true
        case let (a?, b?): return equal(a, b)
        default: return false
        }
    }

    /// True when `text` holds a NUL octet (which a C string would end at): memchr on its
    /// octets, not a walk of the String's UTF-8 view.
    public static func containsNUL(_ text: String) -> Bool {
        with(text) { $0.isEmpty ? false : memchr($0.baseAddress!, 0, $0.count) != nil }
    }

    /// `address` cut at its last "@" octet into the local part and the domain, or nil when
    /// it has none. By octets: an "@" followed by a combining mark is one Character with the
    /// mark, which a Character search misses and a Character index carries to one side.
    public static func splitAddress(_ address: String) -> (local: Substring, domain: Substring)? {
        let utf8 = address.utf8
        guard let at = utf8.lastIndex(of: UInt8(ascii: "@")) else { return nil }
        return (Substring(utf8[..<at]), Substring(utf8[utf8.index(after: at)...]))
    }

    /// Feeds `text`'s octets, and their count, to `hasher`.
    public static func hash(_ text: String?, into hasher: inout Hasher) {
        guard let text else { return hasher.combine(-1) }
        with(text) { octets in
            hasher.combine(octets.count)
            hasher.combine(bytes: octets)
        }
    }
}
