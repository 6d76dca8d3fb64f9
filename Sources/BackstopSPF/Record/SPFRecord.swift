// The RFC 7208 grammar of an SPF record (§4.5, §12), read from the bytes of a TXT record.
// `parse` checks a record once, when its DNS answer enters the cache, and keeps it as its
// source bytes plus the position of every term, so that nothing re-reads the grammar per
// evaluation. It does not expand macros (SPFMacro) and does not evaluate (libspf2 does).

#if canImport(BackstopCore)  // the fuzzers compile these files without the package
import BackstopCore
#endif
import Glibc

/// Why a record breaks the grammar; the text is short and quotes at most a little of it.
public struct SPFSyntaxError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

public struct SPFRecord: Sendable, Equatable {
    public enum Mechanism: UInt8, Sendable {
        case all, include, a, mx, ptr, ip4, ip6, exists

        static func named(_ name: ArraySlice<UInt8>) -> Mechanism? {
            switch name.count {
            case 1 where DNSName.fold(name.first!) == UInt8(ascii: "a"): return .a
            case 2 where SPFRecord.equalsLower(name, "mx"): return .mx
            case 3 where SPFRecord.equalsLower(name, "all"): return .all
            case 3 where SPFRecord.equalsLower(name, "ptr"): return .ptr
            case 3 where SPFRecord.equalsLower(name, "ip4"): return .ip4
            case 3 where SPFRecord.equalsLower(name, "ip6"): return .ip6
            case 6 where SPFRecord.equalsLower(name, "exists"): return .exists
            case 7 where SPFRecord.equalsLower(name, "include"): return .include
            default: return nil
            }
        }

        /// True for the mechanisms that cost one of RFC 7208 §4.6.4's ten DNS lookups.
        public var looksUp: Bool { self != .all && self != .ip4 && self != .ip6 }
    }

    /// The qualifier octet as written: + - ~ ?
    public typealias Qualifier = UInt8

    public struct Directive: Sendable, Equatable {
        public var qualifier: Qualifier
        public var mechanism: Mechanism
        /// The domain-spec's position in `source`, when the term has one.
        public var domainSpec: Range<Int>?
        /// ip4 and ip6: the network address (kept inline: a long record holds thousands).
        public var network: IPAddress?
        public var cidr4: UInt8?
        public var cidr6: UInt8?
        /// The term as written, for the Received-SPF `mechanism=` key.
        public var text: Range<Int>
    }

    /// The record as published (printable ASCII).
    public var source: [UInt8]
    public var directives: [Directive] = []
    public var redirect: Range<Int>?
    public var exp: Range<Int>?
    /// The macro letters the domain-specs (and redirect=, exp=) use: what an outcome depends on.
    public var macros = SPFMacroSet()

    public var hasAll: Bool { directives.contains { $0.mechanism == .all } }

    public func text(_ range: Range<Int>) -> ArraySlice<UInt8> { source[range] }
    public func string(_ range: Range<Int>) -> String { String(decoding: source[range], as: UTF8.self) }

    /// The longest record Backstop reads (a DNS message cannot carry more).
    public static let maxLength = 65_535

    /// True when `bytes` is an SPF version 1 record at all (RFC 7208 §4.5): "v=spf1"
    /// alone or followed by a space, in any case.
    public static func isSPF1(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 6, equalsLower(bytes[0..<6], "v=spf1") else { return false }
        return bytes.count == 6 || bytes[6] == 0x20
    }

    public static func parse(_ bytes: [UInt8]) -> Result<SPFRecord, SPFSyntaxError> {
        guard bytes.count <= maxLength else { return .failure(SPFSyntaxError("record is longer than \(maxLength) octets")) }
        for b in bytes where b < 0x20 || b > 0x7E {
            return .failure(SPFSyntaxError(b >= 0x80 ? "record contains non-ASCII characters" : "record contains a control character"))
        }
        var record = SPFRecord(source: bytes)
        var words: [Range<Int>] = []
        var i = 0
        while i < bytes.count {
            if bytes[i] == 0x20 { i += 1; continue }
            var j = i
            while j < bytes.count, bytes[j] != 0x20 { j += 1 }
            words.append(i..<j)
            i = j
        }
        guard let first = words.first, first.count == 6, equalsLower(bytes[first], "v=spf1") else {
            return .failure(SPFSyntaxError("not an SPF version 1 record"))
        }
        for word in words.dropFirst() {
            if let error = record.readTerm(word) { return .failure(error) }
        }
        return .success(record)
    }

    /// Reads one term into the record; the error when it breaks the grammar.
    private mutating func readTerm(_ word: Range<Int>) -> SPFSyntaxError? {
        let s = source
        var index = word.lowerBound
        var qualifier = UInt8(ascii: "+")
        if [UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "~"), UInt8(ascii: "?")].contains(s[index]) {
            qualifier = s[index]
            index += 1
        }
        var nameEnd = index
        while nameEnd < word.upperBound, SPFRecord.isAlphanumeric(s[nameEnd]) { nameEnd += 1 }
        let next: UInt8? = nameEnd < word.upperBound ? s[nameEnd] : nil
        if let mechanism = Mechanism.named(s[index..<nameEnd]), next == nil || next == UInt8(ascii: ":") || next == UInt8(ascii: "/") {
            switch readDirective(qualifier: qualifier, mechanism: mechanism, rest: nameEnd..<word.upperBound, text: word) {
            case .failure(let error): return error
            case .success(let directive): directives.append(directive)
            }
            return nil
        }
        // A modifier: name "=" macro-string, with no qualifier.
        guard let equals = s[word].firstIndex(of: UInt8(ascii: "=")) else {
            return SPFSyntaxError("unknown mechanism \"\(SPFRecord.quote(s[word]))\"")
        }
        let name = s[word.lowerBound..<equals]
        let value = (equals + 1)..<word.upperBound
        guard let firstOctet = name.first, SPFRecord.isAlpha(firstOctet),
              name.allSatisfy({ SPFRecord.isAlphanumeric($0) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }) else {
            return SPFSyntaxError("invalid term \"\(SPFRecord.quote(s[word]))\"")
        }
        if name.count == 8 && SPFRecord.equalsLower(name, "redirect") || name.count == 3 && SPFRecord.equalsLower(name, "exp") {
            let isRedirect = name.count == 8
            let label = isRedirect ? "redirect" : "exp"
            if let problem = checkDomainSpec(value) { return SPFSyntaxError("\(label)=: \(problem)") }
            if isRedirect {
                if redirect != nil { return SPFSyntaxError("more than one redirect= modifier") }
                redirect = value
            } else {
                if exp != nil { return SPFSyntaxError("more than one exp= modifier") }
                exp = value
            }
            macros.formUnion(SPFMacroSet(letters: s[value]))
        } else if let problem = SPFMacro.check(s[value], explanation: false) {
            return SPFSyntaxError("modifier \(SPFRecord.quote(name)): \(problem)")
        }
        return nil
    }

    private mutating func readDirective(qualifier: Qualifier, mechanism: Mechanism, rest: Range<Int>, text: Range<Int>) -> Result<Directive, SPFSyntaxError> {
        let s = source
        var directive = Directive(qualifier: qualifier, mechanism: mechanism, text: text)
        var body = rest
        var hasArgument = false
        if !body.isEmpty, s[body.lowerBound] == UInt8(ascii: ":") {
            body = (body.lowerBound + 1)..<body.upperBound
            hasArgument = true
        }
        func fail(_ why: String) -> Result<Directive, SPFSyntaxError> {
            .failure(SPFSyntaxError("\(SPFRecord.quote(s[text])): \(why)"))
        }
        switch mechanism {
        case .all:
            guard !hasArgument, body.isEmpty else { return fail("all takes no argument") }
        case .include, .exists, .ptr:
            guard hasArgument || mechanism == .ptr else { return fail("a domain is required") }
            if !hasArgument, !body.isEmpty { return fail("unexpected \"\(SPFRecord.quote(s[body]))\"") }
            if hasArgument {
                if let problem = checkDomainSpec(body) { return fail(problem) }
                directive.domainSpec = body
                macros.formUnion(SPFMacroSet(letters: s[body]))
            }
        case .a, .mx:
            // dual-cidr-length at the end: [ "/" ip4 ] [ "//" ip6 ]; a "/" followed by
            // something other than digits belongs to the domain-spec.
            func digitsAfter(_ slash: Int, in range: Range<Int>) -> Range<Int>? {
                let digits = (slash + 1)..<range.upperBound
                return s[digits].allSatisfy(SPFRecord.isDigit) ? digits : nil
            }
            if let doubleSlash = SPFRecord.lastDoubleSlash(s, body), let digits = digitsAfter(doubleSlash + 1, in: body), !digits.isEmpty {
                guard let v = SPFRecord.cidr(s[digits], max: 128) else { return fail("invalid IPv6 prefix length") }
                directive.cidr6 = v
                body = body.lowerBound..<doubleSlash
            }
            if let slash = s[body].lastIndex(of: UInt8(ascii: "/")), let digits = digitsAfter(slash, in: body) {
                guard let v = SPFRecord.cidr(s[digits], max: 32) else { return fail("invalid IPv4 prefix length") }
                directive.cidr4 = v
                body = body.lowerBound..<slash
            }
            if hasArgument {
                if let problem = checkDomainSpec(body) { return fail(problem) }
                directive.domainSpec = body
                macros.formUnion(SPFMacroSet(letters: s[body]))
            } else if !body.isEmpty {
                return fail("unexpected \"\(SPFRecord.quote(s[body]))\"")
            }
        case .ip4:
            guard hasArgument else { return fail("an address is required") }
            if let slash = s[body].firstIndex(of: UInt8(ascii: "/")) {
                guard let v = SPFRecord.cidr(s[(slash + 1)..<body.upperBound], max: 32) else { return fail("invalid prefix length") }
                directive.cidr4 = v
                body = body.lowerBound..<slash
            }
            guard let octets = SPFRecord.ipv4(s[body]) else { return fail("invalid IPv4 address") }
            directive.network = SPFRecord.address(octets)
        case .ip6:
            guard hasArgument else { return fail("an address is required") }
            if let slash = s[body].firstIndex(of: UInt8(ascii: "/")) {
                guard let v = SPFRecord.cidr(s[(slash + 1)..<body.upperBound], max: 128) else { return fail("invalid prefix length") }
                directive.cidr6 = v
                body = body.lowerBound..<slash
            }
            guard let octets = SPFRecord.ipv6(s[body]) else { return fail("invalid IPv6 address") }
            directive.network = SPFRecord.address(octets)
        }
        return .success(directive)
    }

    /// RFC 7208 §7.1 domain-spec: a macro-string ending in "." toplabel or in a macro.
    private func checkDomainSpec(_ range: Range<Int>) -> String? {
        let spec = source[range]
        if spec.isEmpty { return "empty domain" }
        if let problem = SPFMacro.check(spec, explanation: false) { return problem }
        if SPFMacro.endsWithMacro(spec) { return nil }
        var body = spec
        if body.last == UInt8(ascii: ".") { body = body.dropLast() }
        guard let dot = body.lastIndex(of: UInt8(ascii: ".")) else {
            return "\"\(SPFRecord.quote(spec))\" is not a domain name (no dot)"
        }
        let top = body[(dot + 1)...]
        guard !top.isEmpty, top.allSatisfy({ SPFRecord.isAlphanumeric($0) || $0 == 0x2D }),
              top.first != 0x2D, top.last != 0x2D, top.contains(where: SPFRecord.isAlpha) else {
            return "\"\(SPFRecord.quote(spec))\" does not end in a valid top-level label"
        }
        return nil
    }

    // MARK: octet helpers

    static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
    static func isAlpha(_ b: UInt8) -> Bool { (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7A }
    static func isAlphanumeric(_ b: UInt8) -> Bool { isAlpha(b) || isDigit(b) }

    static func equalsLower(_ bytes: ArraySlice<UInt8>, _ literal: StaticString) -> Bool {
        guard bytes.count == literal.utf8CodeUnitCount else { return false }
        var i = bytes.startIndex
        let p = literal.utf8Start
        for k in 0..<literal.utf8CodeUnitCount {
            if DNSName.fold(bytes[i]) != p[k] { return false }
            i += 1
        }
        return true
    }

    static func lastDoubleSlash(_ s: [UInt8], _ range: Range<Int>) -> Int? {
        guard range.count >= 2 else { return nil }
        var i = range.upperBound - 2
        while i >= range.lowerBound {
            if s[i] == UInt8(ascii: "/") && s[i + 1] == UInt8(ascii: "/") { return i }
            i -= 1
        }
        return nil
    }

    /// "0" or a number without leading zeros, at most `max`.
    static func cidr(_ digits: ArraySlice<UInt8>, max: Int) -> UInt8? {
        guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy(isDigit) else { return nil }
        if digits.count > 1 && digits.first == 0x30 { return nil }
        let v = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        return v <= max ? UInt8(v) : nil
    }

    static func ipv4(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        let parts = text.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for part in parts {
            guard let v = cidr(part, max: 255) else { return nil }
            out.append(v)
        }
        return out
    }

    static func ipv6(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        guard !text.isEmpty, text.count <= 45 else { return nil }
        var address = in6_addr()
        let ok = String(decoding: text, as: UTF8.self).withCString { inet_pton(AF_INET6, $0, &address) } == 1
        return ok ? withUnsafeBytes(of: address) { Array($0) } : nil
    }

    /// 4 or 16 octets as an address, an IPv4-mapped IPv6 network kept as IPv6 (it is an
    /// ip6 term's network, which never matches an IPv4 client).
    static func address(_ octets: [UInt8]) -> IPAddress? {
        switch octets.count {
        case 4: return IPAddress(octets: octets)
        case 16: return .v6(octets.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }, octets.suffix(8).reduce(0) { $0 << 8 | UInt64($1) })
        default: return nil
        }
    }

    /// Up to 40 octets of attacker text for an error message (the log escapes it later).
    static func quote(_ bytes: ArraySlice<UInt8>) -> String {
        bytes.count <= 40 ? String(decoding: bytes, as: UTF8.self) : String(decoding: bytes.prefix(37), as: UTF8.self) + "..."
    }
}
