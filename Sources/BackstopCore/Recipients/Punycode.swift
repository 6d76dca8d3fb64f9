// RFC 3492 Punycode and the small part of IDNA Backstop needs: turning a domain written
// with U-labels (bücher.example) into its A-label form (xn--bcher-kva.example), so both
// spellings of one domain compare equal. Deliberately not a full UTS #46 / IDNA2008
// implementation: no validity tables (a domain we cannot convert is reported, not guessed
// at), only lowercasing and NFC, which is what makes equal domains compare equal.

import Foundation

public enum Punycode {
    private static let base = 36, tMin = 1, tMax = 26, skew = 38, damp = 700
    private static let initialBias = 72, initialN = 128

    private static func adapt(_ delta: Int, _ numPoints: Int, _ firstTime: Bool) -> Int {
        var delta = firstTime ? delta / damp : delta / 2
        delta += delta / numPoints
        var k = 0
        while delta > ((base - tMin) * tMax) / 2 {
            delta /= base - tMin
            k += base
        }
        return k + (((base - tMin + 1) * delta) / (delta + skew))
    }

    private static func digit(_ d: Int) -> UInt8 {
        d < 26 ? UInt8(ascii: "a") + UInt8(d) : UInt8(ascii: "0") + UInt8(d - 26)
    }

    private static func value(of c: UInt8) -> Int? {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"): Int(c - UInt8(ascii: "a"))
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): Int(c - UInt8(ascii: "A"))
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(c - UInt8(ascii: "0")) + 26
        default: nil
        }
    }

    /// Encodes a label's code points (without the "xn--" prefix); nil on overflow.
    public static func encode(_ input: String) -> String? {
        let scalars = input.unicodeScalars.map { Int($0.value) }
        var output: [UInt8] = scalars.filter { $0 < 0x80 }.map { UInt8($0) }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append(UInt8(ascii: "-")) }
        var n = initialN, delta = 0, bias = initialBias
        while handled < scalars.count {
            guard let m = scalars.filter({ $0 >= n }).min() else { return nil }
            let (product, overflow) = (m - n).multipliedReportingOverflow(by: handled + 1)
            guard !overflow, delta <= Int(Int32.max) - product else { return nil }
            delta += product
            n = m
            for c in scalars {
                if c < n {
                    delta += 1
                    guard delta <= Int(Int32.max) else { return nil }
                }
                if c == n {
                    var q = delta
                    var k = base
                    while true {
                        let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                        if q < t { break }
                        output.append(digit(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digit(q))
                    bias = adapt(delta, handled + 1, handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Decodes a label (without the "xn--" prefix); nil when it is not valid Punycode.
    public static func decode(_ input: String) -> String? {
        let bytes = Array(input.utf8)
        guard bytes.allSatisfy({ $0 < 0x80 }) else { return nil }
        var output: [Int] = []
        var start = 0
        if let lastDash = bytes.lastIndex(of: UInt8(ascii: "-")) {
            output = bytes[..<lastDash].map { Int($0) }
            start = lastDash + 1
        }
        var n = initialN, i = 0, bias = initialBias
        var index = start
        while index < bytes.count {
            let oldI = i
            var w = 1
            var k = base
            while true {
                guard index < bytes.count, let d = value(of: bytes[index]) else { return nil }
                index += 1
                guard d <= (Int(Int32.max) - i) / w else { return nil }
                i += d * w
                let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                if d < t { break }
                guard w <= Int(Int32.max) / (base - t) else { return nil }
                w *= base - t
                k += base
            }
            bias = adapt(i - oldI, output.count + 1, oldI == 0)
            guard i / (output.count + 1) <= Int(Int32.max) - n else { return nil }
            n += i / (output.count + 1)
            i %= output.count + 1
            guard n >= 0x80, let scalar = Unicode.Scalar(UInt32(n)) else { return nil }
            output.insert(Int(scalar.value), at: i)
            i += 1
        }
        var result = String.UnicodeScalarView()
        for c in output {
            guard let scalar = Unicode.Scalar(UInt32(c)) else { return nil }
            result.append(scalar)
        }
        return String(result)
    }
}

/// Domain name forms: the A-label form is the one stored and compared.
public enum DomainName {
    /// The label separators IDNA accepts besides ".": ideographic and full-width full stops.
    private static let dots: Set<Unicode.Scalar> = [".", "\u{3002}", "\u{FF0E}", "\u{FF61}"]
    /// The longest label in octets (RFC 1035). A U-label encodes to at least as many octets
    /// as it has code points, so one with more cannot be converted.
    public static let maxLabel = 63
    private static let marks: Set<Unicode.GeneralCategory> = [.nonspacingMark, .spacingMark, .enclosingMark]

    /// Lowercase A-label form without a trailing dot, or nil when a label cannot be
    /// converted (an empty label in the middle, a U-label Punycode cannot encode, one that
    /// begins with a combining mark).
    public static func asciiForm(_ domain: String) -> String? {
        var labels: [String] = []
        var current = String.UnicodeScalarView()
        for scalar in domain.unicodeScalars {
            if dots.contains(scalar) {
                labels.append(String(current))
                current = String.UnicodeScalarView()
            } else {
                current.append(scalar)
            }
        }
        labels.append(String(current))
        if labels.count > 1, labels.last == "" { labels.removeLast() }  // the root's trailing dot
        var out: [String] = []
        for label in labels {
            if label.isEmpty { return nil }
            if label.utf8.allSatisfy({ $0 < 0x80 }) {
                // ASCII labels, A-labels included, are only lowercased: the same rule the
                // allocation-free lookup path applies, so both paths agree byte for byte.
                out.append(label.lowercased())
            } else {
                // Encoding is quadratic in a label's length (one pass per code point): a label
                // longer than an A-label can be is no domain, and is refused before it is
                // encoded. Decomposed text (NFD) may have a few scalars per code point, so
                // the cap before normalising is looser.
                guard label.unicodeScalars.count <= 4 * maxLabel else { return nil }
                let unicode = label.precomposedStringWithCanonicalMapping.lowercased()
                guard unicode.unicodeScalars.count <= maxLabel else { return nil }
                // No label begins with a combining mark (RFC 5891 §4.2.3.2); Postfix's ICU
                // refuses one too.
                if let first = unicode.unicodeScalars.first, marks.contains(first.properties.generalCategory) { return nil }
                guard let encoded = Punycode.encode(unicode) else { return nil }
                out.append("xn--" + encoded)
            }
        }
        return out.joined(separator: ".")
    }

    /// The U-label form for display (A-labels decoded); labels that do not decode stay as they are.
    public static func unicodeForm(_ domain: String) -> String {
        domain.split(separator: ".", omittingEmptySubsequences: false).map { label -> String in
            let lower = label.lowercased()
            if lower.hasPrefix("xn--"), lower.utf8.count <= maxLabel, let decoded = Punycode.decode(String(lower.dropFirst(4))) {
                return decoded
            }
            return String(label)
        }.joined(separator: ".")
    }
}
