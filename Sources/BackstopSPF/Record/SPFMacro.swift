// SPF macros (RFC 7208 §7): checking a macro-string, and expanding one in time linear in
// its length whatever it expands to. A domain is built from its right end and stops once
// it holds the 253 octets §7.3 keeps (whole labels, cut from the left), so `a:%{d}%{d}…`
// costs the length of the record, not the length of its expansion; an explanation stops
// at `maxExplanation` octets. It does not look anything up: %{p} is given to it.

#if canImport(BackstopCore)  // the fuzzers compile these files without the package
import BackstopCore
#endif

/// The macro letters a string uses (what an evaluation's outcome can depend on).
public struct SPFMacroSet: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let sender = SPFMacroSet(rawValue: 1 << 0)        // s
    public static let localPart = SPFMacroSet(rawValue: 1 << 1)     // l
    public static let senderDomain = SPFMacroSet(rawValue: 1 << 2)  // o
    public static let domain = SPFMacroSet(rawValue: 1 << 3)        // d
    public static let ip = SPFMacroSet(rawValue: 1 << 4)            // i
    public static let validated = SPFMacroSet(rawValue: 1 << 5)     // p
    public static let helo = SPFMacroSet(rawValue: 1 << 6)          // h
    public static let version = SPFMacroSet(rawValue: 1 << 7)       // v
    public static let prettyIP = SPFMacroSet(rawValue: 1 << 8)      // c
    public static let receiver = SPFMacroSet(rawValue: 1 << 9)      // r
    public static let time = SPFMacroSet(rawValue: 1 << 10)         // t

    /// Letters that read the local part of the sender (s, l): an outcome whose records use
    /// them is kept per sender, not per domain.
    public static let readsLocalPart: SPFMacroSet = [.sender, .localPart]

    static func letter(_ b: UInt8) -> SPFMacroSet? {
        switch DNSName.fold(b) {
        case UInt8(ascii: "s"): .sender
        case UInt8(ascii: "l"): .localPart
        case UInt8(ascii: "o"): .senderDomain
        case UInt8(ascii: "d"): .domain
        case UInt8(ascii: "i"): .ip
        case UInt8(ascii: "p"): .validated
        case UInt8(ascii: "h"): .helo
        case UInt8(ascii: "v"): .version
        case UInt8(ascii: "c"): .prettyIP
        case UInt8(ascii: "r"): .receiver
        case UInt8(ascii: "t"): .time
        default: nil
        }
    }

    /// The letters of every "%{x" in a checked macro-string.
    public init(letters text: ArraySlice<UInt8>) {
        self = []
        var i = text.startIndex
        while i < text.endIndex {
            if text[i] == UInt8(ascii: "%"), i + 1 < text.endIndex {
                if text[i + 1] == UInt8(ascii: "{"), i + 2 < text.endIndex, let set = SPFMacroSet.letter(text[i + 2]) {
                    formUnion(set)
                }
                i += 2
            } else {
                i += 1
            }
        }
    }
}

public enum SPFMacro {
    /// The longest expanded explanation kept (RFC 7208 §6.2 text, shown to the sender).
    public static let maxExplanation = 512
    /// RFC 7208 §7.3: an expanded domain is cut to this many octets.
    public static let maxDomain = 253

    static let delimiters: Set<UInt8> = Set(".-+,/_=".utf8)

    /// Why `text` is not an RFC 7208 §7.1 macro-string (explanation-string when
    /// `explanation`: spaces and the c, r, t letters allowed); nil when it is one.
    public static func check(_ text: ArraySlice<UInt8>, explanation: Bool) -> String? {
        var i = text.startIndex
        while i < text.endIndex {
            let c = text[i]
            guard (c >= 0x21 && c <= 0x7E) || (explanation && c == 0x20) else { return "invalid character in a macro-string" }
            if c != UInt8(ascii: "%") { i += 1; continue }
            guard i + 1 < text.endIndex else { return "\"%\" at the end of a macro-string" }
            let n = text[i + 1]
            if n == UInt8(ascii: "%") || n == UInt8(ascii: "_") || n == UInt8(ascii: "-") { i += 2; continue }
            guard n == UInt8(ascii: "{") else { return "invalid macro \"%\(Character(Unicode.Scalar(n)))\"" }
            var j = i + 2
            guard j < text.endIndex, let letter = SPFMacroSet.letter(text[j]) else { return "invalid macro letter" }
            if !explanation && !letter.isDisjoint(with: [.prettyIP, .receiver, .time]) { return "macro letter allowed only in explanations" }
            j += 1
            var digitsValue = 0
            var digitCount = 0
            while j < text.endIndex, SPFRecord.isDigit(text[j]) {
                digitsValue = min(digitsValue * 10 + Int(text[j] - 0x30), 1_000_000)
                digitCount += 1
                j += 1
            }
            if digitCount > 0 && digitsValue == 0 { return "macro transformer must not be zero" }
            if j < text.endIndex, DNSName.fold(text[j]) == UInt8(ascii: "r") { j += 1 }
            while j < text.endIndex, delimiters.contains(text[j]) { j += 1 }
            guard j < text.endIndex, text[j] == UInt8(ascii: "}") else { return "unterminated or invalid macro" }
            i = j + 1
        }
        return nil
    }

    /// True when a checked macro-string ends with a macro (then it needs no top label).
    static func endsWithMacro(_ spec: ArraySlice<UInt8>) -> Bool {
        var i = spec.startIndex
        var lastMacroEnd = -1
        while i < spec.endIndex {
            if spec[i] == UInt8(ascii: "%"), i + 1 < spec.endIndex {
                if spec[i + 1] == UInt8(ascii: "{"), let close = spec[(i + 2)...].firstIndex(of: UInt8(ascii: "}")) {
                    i = close + 1
                } else {
                    i += 2
                }
                lastMacroEnd = i
                continue
            }
            i += 1
        }
        return lastMacroEnd == spec.endIndex
    }

    /// One piece of a checked macro-string.
    enum Piece {
        case literal(Range<Int>)
        case escape(UInt8)               // %% → "%", %_ → " "; %- is written by `append`
        case urlSpace                    // %-
        case macro(letter: SPFMacroSet, keep: Int, reverse: Bool, delimiters: [UInt8], escaped: Bool)
    }

    /// Splits a checked macro-string into pieces; nil when it is not one.
    static func pieces(_ text: ArraySlice<UInt8>) -> [Piece]? {
        var out: [Piece] = []
        var i = text.startIndex
        var literalStart = i
        func flush(_ end: Int) { if end > literalStart { out.append(.literal(literalStart..<end)) } }
        while i < text.endIndex {
            guard text[i] == UInt8(ascii: "%") else { i += 1; continue }
            flush(i)
            guard i + 1 < text.endIndex else { return nil }
            switch text[i + 1] {
            case UInt8(ascii: "%"): out.append(.escape(UInt8(ascii: "%"))); i += 2
            case UInt8(ascii: "_"): out.append(.escape(0x20)); i += 2
            case UInt8(ascii: "-"): out.append(.urlSpace); i += 2
            case UInt8(ascii: "{"):
                var j = i + 2
                guard j < text.endIndex, let letter = SPFMacroSet.letter(text[j]) else { return nil }
                let escaped = text[j] >= 0x41 && text[j] <= 0x5A
                j += 1
                var keep = 0
                while j < text.endIndex, SPFRecord.isDigit(text[j]) {
                    keep = min(keep * 10 + Int(text[j] - 0x30), 1_000_000)
                    j += 1
                }
                var reverse = false
                if j < text.endIndex, DNSName.fold(text[j]) == UInt8(ascii: "r") { reverse = true; j += 1 }
                var delimiters: [UInt8] = []
                while j < text.endIndex, SPFMacro.delimiters.contains(text[j]) {
                    if !delimiters.contains(text[j]) { delimiters.append(text[j]) }
                    j += 1
                }
                guard j < text.endIndex, text[j] == UInt8(ascii: "}") else { return nil }
                out.append(.macro(letter: letter, keep: keep, reverse: reverse, delimiters: delimiters, escaped: escaped))
                i = j + 1
            default:
                return nil
            }
            literalStart = i
        }
        flush(text.endIndex)
        return out
    }
}

/// What the macro letters stand for in one evaluation (RFC 7208 §7.3).
public struct SPFMacroContext: Sendable {
    /// local-part "@" domain of the identity checked.
    public var sender: [UInt8]
    /// The <domain> of the record being evaluated.
    public var domain: [UInt8]
    public var client: IPAddress
    public var helo: [UInt8]
    public var receiver: [UInt8]
    /// %{p}: a validated name of the client, "unknown" when there is none.
    public var validated: [UInt8] = Array("unknown".utf8)
    /// %{i} nibbles of an IPv6 client in upper case when the address was written so.
    public var upperNibbles = false
    /// %{t}: seconds since the epoch.
    public var now: Int = 0

    public init(sender: [UInt8], domain: [UInt8], client: IPAddress, helo: [UInt8], receiver: [UInt8]) {
        self.sender = sender
        self.domain = domain
        self.client = client
        self.helo = helo
        self.receiver = receiver
    }

    var at: Int? { sender.lastIndex(of: UInt8(ascii: "@")) }
    var localPart: ArraySlice<UInt8> {
        guard let at, at > 0 else { return ArraySlice("postmaster".utf8) }
        return sender[..<at]
    }
    var senderDomain: ArraySlice<UInt8> {
        guard let at else { return sender[...] }
        return sender[(at + 1)...]
    }

    func value(_ letter: SPFMacroSet) -> [UInt8] {
        switch letter {
        case .sender: return sender
        case .localPart: return Array(localPart)
        case .senderDomain: return Array(senderDomain)
        case .domain: return domain
        case .ip:
            switch client {
            case .v4: return Array(client.description.utf8)
            case .v6(let hi, let lo):
                let hex = Array((upperNibbles ? "0123456789ABCDEF" : "0123456789abcdef").utf8)
                var out: [UInt8] = []
                out.reserveCapacity(63)
                for word in [hi, lo] {
                    for shift in stride(from: 60, through: 0, by: -4) {
                        if !out.isEmpty { out.append(UInt8(ascii: ".")) }
                        out.append(hex[Int((word >> UInt64(shift)) & 0xF)])
                    }
                }
                return out
            }
        case .validated: return validated
        case .version: return Array((client.isV4 ? "in-addr" : "ip6").utf8)
        case .helo: return helo
        case .prettyIP: return Array(client.description.utf8)
        case .receiver: return receiver
        case .time: return Array(String(now).utf8)
        default: return []
        }
    }

    /// A macro's value after its transformers and URL escaping.
    func transformed(_ letter: SPFMacroSet, keep: Int, reverse: Bool, delimiters: [UInt8], escaped: Bool) -> [UInt8] {
        var out = value(letter)
        if keep > 0 || reverse || !delimiters.isEmpty {
            let split = delimiters.isEmpty ? [UInt8(ascii: ".")] : delimiters
            var parts = out.split(omittingEmptySubsequences: false, whereSeparator: { split.contains($0) })
            if reverse { parts.reverse() }
            if keep > 0, keep < parts.count { parts = Array(parts.suffix(keep)) }
            out = Array(parts.joined(separator: [UInt8(ascii: ".")]))
        }
        return escaped ? SPFMacroContext.urlEscape(out) : out
    }

    static func urlEscape(_ bytes: [UInt8]) -> [UInt8] {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for b in bytes {
            if SPFRecord.isAlphanumeric(b) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E {
                out.append(b)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            }
        }
        return out
    }

    /// The expansion of a piece, appended to `out` (explanations).
    private func append(_ piece: SPFMacro.Piece, from text: ArraySlice<UInt8>, to out: inout [UInt8]) {
        switch piece {
        case .literal(let range): out += text[range]
        case .escape(let b): out.append(b)
        case .urlSpace: out += Array("%20".utf8)
        case .macro(let letter, let keep, let reverse, let delimiters, let escaped):
            out += transformed(letter, keep: keep, reverse: reverse, delimiters: delimiters, escaped: escaped)
        }
    }

    /// Expands a domain-spec into the name to ask for (RFC 7208 §7.3): no final dot, cut
    /// from the left, label by label, to at most 253 octets. Built from the right end, so
    /// the work is bounded by the spec's length plus 256 octets of output. nil when the
    /// spec is not a macro-string.
    public func expandDomain(_ spec: ArraySlice<UInt8>) -> [UInt8]? {
        if !spec.contains(UInt8(ascii: "%")) {
            var name = Array(spec)
            if name.last == UInt8(ascii: ".") { name.removeLast() }
            return SPFMacroContext.cutFromLeft(name)
        }
        guard let pieces = SPFMacro.pieces(spec) else { return nil }
        // The tail of the expansion, reversed: one octet for a final dot, 253 kept, one more
        // to tell whether the cut falls on a label boundary.
        let window = SPFMacro.maxDomain + 2
        var tail: [UInt8] = []
        tail.reserveCapacity(window + 64)
        var complete = true
        for piece in pieces.reversed() {
            if tail.count >= window { complete = false; break }
            var bytes: [UInt8] = []
            append(piece, from: spec, to: &bytes)
            tail += bytes.reversed()
        }
        var name = Array(tail.reversed())
        if !complete || name.count > window {
            // Only the last `window` octets matter; what lies before them is cut anyway.
            name = Array(name.suffix(window))
            if name.last == UInt8(ascii: ".") { name.removeLast() }
            // Drop the partial first label: the cut is always at a label boundary.
            guard name.count > SPFMacro.maxDomain else { return name }
            return SPFMacroContext.cutFromLeft(name, partialFirst: true)
        }
        if name.last == UInt8(ascii: ".") { name.removeLast() }
        return SPFMacroContext.cutFromLeft(name)
    }

    /// Removes whole labels from the left until at most 253 octets remain. With
    /// `partialFirst`, the first label is known to be a fragment and always goes.
    static func cutFromLeft(_ name: [UInt8], partialFirst: Bool = false) -> [UInt8] {
        guard name.count > SPFMacro.maxDomain || partialFirst else { return name }
        var start = 0
        repeat {
            guard let dot = name[start...].firstIndex(of: UInt8(ascii: ".")) else { return [] }
            start = dot + 1
        } while name.count - start > SPFMacro.maxDomain
        return Array(name[start...])
    }

    /// Expands an explanation string, at most `SPFMacro.maxExplanation` octets; nil when it
    /// is not a valid explanation-string.
    public func expandExplanation(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        guard SPFMacro.check(text, explanation: true) == nil, let pieces = SPFMacro.pieces(text) else { return nil }
        var out: [UInt8] = []
        for piece in pieces {
            append(piece, from: text, to: &out)
            if out.count >= SPFMacro.maxExplanation { return Array(out.prefix(SPFMacro.maxExplanation)) }
        }
        return out
    }
}
