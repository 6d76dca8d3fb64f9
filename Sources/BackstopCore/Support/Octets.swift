// String equality and hashing by UTF-8 octets. Swift's `==` on String is Unicode canonical
// equivalence: "é" written as one code point and as "e" plus a combining accent are one
// string to it, but two different mailboxes to DNS (an SPF macro expands the octets). A
// value that reaches DNS or a key as octets is compared, and hashed, here (hashed by
// octets too: with Swift's hash every spelling of one text hashes alike, and distinct keys
// with one hash are a collision flood). Not for text shown to people.

import Glibc

public enum Octets {
    /// True when `a` and `b` have the same UTF-8 octets.
    public static func equal(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in x.count == y.count && (x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0) }
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
        var text = text
        return text.withUTF8 { $0.isEmpty ? false : memchr($0.baseAddress!, 0, $0.count) != nil }
    }

    /// Feeds `text`'s octets, and their count, to `hasher`.
    public static func hash(_ text: String?, into hasher: inout Hasher) {
        guard var text else { return hasher.combine(-1) }
        text.withUTF8 { octets in
            hasher.combine(octets.count)
            hasher.combine(bytes: UnsafeRawBufferPointer(octets))
        }
    }
}
