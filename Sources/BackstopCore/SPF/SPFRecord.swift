// The RFC 7208 grammar of an SPF record, checked in Swift before libspf2 sees the record:
// libspf2 accepts some records the RFC forbids (permerror) and refuses or misreads some it
// allows. `SPFRecord.parse` says which; `libspf2Text` writes an equivalent record in the
// forms libspf2 reads right. Macros are expanded here too (SPFMacroContext), for
// domain-specs and explanations alike: libspf2 garbles explanations and some domains.

import Foundation

public struct SPFSyntaxError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

struct SPFRecord: Sendable {
    enum Mechanism: String, Sendable {
        case all, include, a, mx, ptr, ip4, ip6, exists
    }

    struct Directive: Sendable {
        var qualifier: Character      // + - ~ ?
        var mechanism: Mechanism
        var domainSpec: String?
        var network: String?          // ip4/ip6 address text
        var cidr4: Int?
        var cidr6: Int?
        var text: String              // as written, for the Received-SPF mechanism key
    }

    enum Term: Sendable {
        case directive(Directive)
        case modifier(name: String, value: String)
    }

    var terms: [Term]
    var redirect: String?
    var exp: String?

    var directives: [Directive] {
        terms.compactMap { if case .directive(let d) = $0 { d } else { nil } }
    }
    var hasAll: Bool { directives.contains { $0.mechanism == .all } }

    /// True when `text` is an SPF version 1 record at all (RFC 7208 §4.5).
    static func isSPF1(_ bytes: [UInt8]) -> Bool {
        let prefix = Array("v=spf1".utf8)
        guard bytes.count >= prefix.count else { return false }
        for (i, c) in prefix.enumerated() where bytes[i] | 0x20 != c | 0x20 { return false }
        return bytes.count == prefix.count || bytes[prefix.count] == 0x20
    }

    static func parse(_ bytes: [UInt8]) -> Result<SPFRecord, SPFSyntaxError> {
        for b in bytes where b < 0x20 || b > 0x7E {
            return .failure(SPFSyntaxError(b >= 0x80 ? "record contains non-ASCII characters" : "record contains a control character"))
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let words = text.split(separator: " ", omittingEmptySubsequences: true)
        guard let first = words.first, first.lowercased() == "v=spf1" else { return .failure(SPFSyntaxError("not an SPF version 1 record")) }
        var record = SPFRecord(terms: [])
        for word in words.dropFirst() {
            switch parseTerm(String(word)) {
            case .failure(let error): return .failure(error)
            case .success(let term):
                if case .modifier(let name, let value) = term {
                    switch name {
                    case "redirect":
                        if record.redirect != nil { return .failure(SPFSyntaxError("more than one redirect= modifier")) }
                        record.redirect = value
                    case "exp":
                        if record.exp != nil { return .failure(SPFSyntaxError("more than one exp= modifier")) }
                        record.exp = value
                    default: break
                    }
                }
                record.terms.append(term)
            }
        }
        return .success(record)
    }

    static func parseTerm(_ word: String) -> Result<Term, SPFSyntaxError> {
        let chars = Array(word)
        var index = 0
        var qualifier: Character = "+"
        if let q = chars.first, "+-~?".contains(q) {
            qualifier = q
            index = 1
        }
        var nameEnd = index
        while nameEnd < chars.count, chars[nameEnd].isLetter || chars[nameEnd].isNumber { nameEnd += 1 }
        let name = String(chars[index..<nameEnd]).lowercased()
        let next: Character? = nameEnd < chars.count ? chars[nameEnd] : nil
        if let mechanism = Mechanism(rawValue: name), next == nil || next == ":" || next == "/" {
            return parseDirective(qualifier: qualifier, mechanism: mechanism, rest: String(chars[nameEnd...]), text: word)
                .map { .directive($0) }
        }
        // A modifier: name "=" macro-string, with no qualifier.
        guard let equals = word.firstIndex(of: "=") else {
            return .failure(SPFSyntaxError("unknown mechanism \"\(word)\""))
        }
        let modName = String(word[..<equals])
        let value = String(word[word.index(after: equals)...])
        guard let firstChar = modName.first, firstChar.isASCII, firstChar.isLetter,
              modName.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }) else {
            return .failure(SPFSyntaxError("invalid term \"\(word)\""))
        }
        let lower = modName.lowercased()
        if lower == "redirect" || lower == "exp" {
            if let problem = checkDomainSpec(value) { return .failure(SPFSyntaxError("\(lower)=: \(problem)")) }
        } else if let problem = checkMacroString(value, explanation: false) {
            return .failure(SPFSyntaxError("modifier \(modName): \(problem)"))
        }
        return .success(.modifier(name: lower, value: value))
    }

    static func parseDirective(qualifier: Character, mechanism: Mechanism, rest: String, text: String) -> Result<Directive, SPFSyntaxError> {
        var directive = Directive(qualifier: qualifier, mechanism: mechanism, text: text)
        var rest = Substring(rest)
        var argument: Substring?
        if rest.hasPrefix(":") {
            rest = rest.dropFirst()
            argument = rest
        }
        func fail(_ why: String) -> Result<Directive, SPFSyntaxError> { .failure(SPFSyntaxError("\(text): \(why)")) }
        switch mechanism {
        case .all:
            guard argument == nil, rest.isEmpty else { return fail("all takes no argument") }
        case .include, .exists, .ptr:
            guard argument != nil || mechanism == .ptr else { return fail("a domain is required") }
            if argument == nil, !rest.isEmpty { return fail("unexpected \"\(rest)\"") }
            if let argument {
                if let problem = checkDomainSpec(String(argument)) { return fail(problem) }
                directive.domainSpec = String(argument)
            }
        case .a, .mx:
            var body = rest
            // dual-cidr-length at the end: [ "/" ip4 ] [ "//" ip6 ]
            // A "/" followed by something other than digits belongs to the domain-spec.
            func isDigits(_ s: Substring) -> Bool { !s.isEmpty && s.allSatisfy { $0.isASCII && $0.isNumber } }
            if let range = body.range(of: "//", options: .backwards), isDigits(body[range.upperBound...]) {
                let digits = body[range.upperBound...]
                guard let v = cidr(digits, max: 128) else { return fail("invalid IPv6 prefix length") }
                directive.cidr6 = v
                body = body[..<range.lowerBound]
            }
            if let slash = body.lastIndex(of: "/"), isDigits(body[body.index(after: slash)...]) || body.index(after: slash) == body.endIndex {
                let digits = body[body.index(after: slash)...]
                guard let v = cidr(digits, max: 32) else { return fail("invalid IPv4 prefix length") }
                directive.cidr4 = v
                body = body[..<slash]
            }
            if argument != nil {
                if let problem = checkDomainSpec(String(body)) { return fail(problem) }
                directive.domainSpec = String(body)
            } else if !body.isEmpty {
                return fail("unexpected \"\(body)\"")
            }
        case .ip4:
            guard let argument else { return fail("an address is required") }
            var body = argument
            if let slash = body.firstIndex(of: "/") {
                guard let v = cidr(body[body.index(after: slash)...], max: 32) else { return fail("invalid prefix length") }
                directive.cidr4 = v
                body = body[..<slash]
            }
            guard isIPv4(body) else { return fail("invalid IPv4 address") }
            directive.network = String(body)
        case .ip6:
            guard let argument else { return fail("an address is required") }
            var body = argument
            if let slash = body.firstIndex(of: "/") {
                guard let v = cidr(body[body.index(after: slash)...], max: 128) else { return fail("invalid prefix length") }
                directive.cidr6 = v
                body = body[..<slash]
            }
            var v6 = in6_addr()
            guard !body.isEmpty, inet_pton(AF_INET6, String(body), &v6) == 1 else { return fail("invalid IPv6 address") }
            directive.network = String(body)
        }
        return .success(directive)
    }

    /// "0" or a number without leading zeros, at most `max`.
    static func cidr(_ digits: Substring, max: Int) -> Int? {
        guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        if digits.count > 1 && digits.first == "0" { return nil }
        guard let v = Int(digits), v <= max else { return nil }
        return v
    }

    static func isIPv4(_ text: Substring) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return false }
        return parts.allSatisfy { cidr($0, max: 255) != nil }
    }

    /// RFC 7208 §7.1 domain-spec: a macro-string ending in "." toplabel or a macro.
    static func checkDomainSpec(_ spec: String) -> String? {
        if spec.isEmpty { return "empty domain" }
        if let problem = checkMacroString(spec, explanation: false) { return problem }
        if endsWithMacro(spec) { return nil }
        var body = Substring(spec)
        if body.hasSuffix(".") { body = body.dropLast() }
        guard let dot = body.lastIndex(of: ".") else { return "\"\(spec)\" is not a domain name (no dot)" }
        let top = body[body.index(after: dot)...]
        guard !top.isEmpty, top.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }),
              top.first != "-", top.last != "-", top.contains(where: { $0.isLetter }) else {
            return "\"\(spec)\" does not end in a valid top-level label"
        }
        return nil
    }

    static func endsWithMacro(_ spec: String) -> Bool {
        let chars = Array(spec.utf8)
        // Walk the string to know which "}" closes a macro.
        var i = 0
        var lastMacroEnd = -1
        while i < chars.count {
            if chars[i] == UInt8(ascii: "%"), i + 1 < chars.count {
                if chars[i + 1] == UInt8(ascii: "{"), let close = chars[(i + 2)...].firstIndex(of: UInt8(ascii: "}")) {
                    i = close + 1
                } else {
                    i += 2
                }
                lastMacroEnd = i
                continue
            }
            i += 1
        }
        return lastMacroEnd == chars.count
    }

    static let macroLetters: Set<Character> = ["s", "l", "o", "d", "i", "p", "h", "v"]
    static let explanationLetters: Set<Character> = ["c", "r", "t"]
    static let delimiters: Set<Character> = [".", "-", "+", ",", "/", "_", "="]

    /// RFC 7208 §7.1 macro-string (explanation-string when `explanation`: spaces allowed,
    /// and the c, r, t letters).
    static func checkMacroString(_ text: String, explanation: Bool) -> String? {
        let chars = Array(text)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            guard c.isASCII, let v = c.asciiValue, (v >= 0x21 && v <= 0x7E) || (explanation && v == 0x20) else {
                return "invalid character in \"\(text)\""
            }
            if c != "%" { i += 1; continue }
            guard i + 1 < chars.count else { return "\"%\" at the end of \"\(text)\"" }
            let n = chars[i + 1]
            if n == "%" || n == "_" || n == "-" { i += 2; continue }
            guard n == "{" else { return "invalid macro \"%\(n)\"" }
            var j = i + 2
            guard j < chars.count else { return "unterminated macro" }
            let letter = Character(chars[j].lowercased())
            guard macroLetters.contains(letter) || (explanation && explanationLetters.contains(letter)) else {
                return "invalid macro letter \"\(chars[j])\""
            }
            j += 1
            var digits = ""
            while j < chars.count, chars[j].isASCII, chars[j].isNumber { digits.append(chars[j]); j += 1 }
            if !digits.isEmpty, Int(digits) ?? 0 == 0 { return "macro transformer must not be zero" }
            if j < chars.count, chars[j] == "r" || chars[j] == "R" { j += 1 }
            while j < chars.count, delimiters.contains(chars[j]) { j += 1 }
            guard j < chars.count, chars[j] == "}" else { return "invalid macro in \"\(text)\"" }
            i = j + 1
        }
        return nil
    }

    /// How a domain in a rewritten record is used, for `libspf2Text`'s `name` closure.
    enum NameUse {
        case lookup        // a, mx, include, exists, redirect, exp: asked in DNS
        case anyAddress    // a/0, mx/0: matches any address of the client's family
        case compare       // ptr: compared with the validated client name, not asked
    }

    /// The same record in forms libspf2 reads right, for one client: every domain-spec
    /// replaced by `name` (Backstop expands macros itself), dual CIDR lengths reduced to
    /// the one for the client's family, prefix length 0 written as two halves (ip4/ip6)
    /// or as an "any address" alias (a/mx), unknown modifiers (which libspf2 may refuse)
    /// and terms after "all" dropped, and redirect= dropped when there is an "all"
    /// (RFC 7208 §6.1: it is then ignored).
    func libspf2Text(client: IPAddress, name: (_ spec: String?, _ use: NameUse) -> String) -> String {
        var out = ["v=spf1"]
        var sawAll = false
        for term in terms {
            switch term {
            case .directive(let d):
                if sawAll { continue }
                let q = d.qualifier == "+" ? "" : String(d.qualifier)
                switch d.mechanism {
                case .ip4 where d.cidr4 == 0:
                    out.append("\(q)ip4:0.0.0.0/1")
                    out.append("\(q)ip4:128.0.0.0/1")
                case .ip6 where d.cidr6 == 0:
                    out.append("\(q)ip6:::/1")
                    out.append("\(q)ip6:8000::/1")
                case .ip4:
                    out.append("\(q)ip4:\(d.network ?? "")" + (d.cidr4.map { "/\($0)" } ?? ""))
                case .ip6:
                    out.append("\(q)ip6:\(d.network ?? "")" + (d.cidr6.map { "/\($0)" } ?? ""))
                case .a, .mx:
                    let cidr = client.isV4 ? d.cidr4 : d.cidr6
                    if cidr == 0 {
                        out.append(q + d.mechanism.rawValue + ":" + name(d.domainSpec, .anyAddress))
                    } else {
                        let suffix = cidr.map { client.isV4 ? "/\($0)" : "//\($0)" } ?? ""
                        out.append(q + d.mechanism.rawValue + ":" + name(d.domainSpec, .lookup) + suffix)
                    }
                case .all:
                    sawAll = true
                    out.append(q + "all")
                case .ptr:
                    out.append(q + "ptr" + (d.domainSpec.map { ":" + name($0, .compare) } ?? ""))
                case .include, .exists:
                    out.append(q + d.mechanism.rawValue + ":" + name(d.domainSpec, .lookup))
                }
            case .modifier(let modifier, let value):
                if modifier == "exp" { out.append("exp=" + name(value, .lookup)) }
            }
        }
        if let redirect, !hasAll { out.append("redirect=" + name(redirect, .lookup)) }
        return out.joined(separator: " ")
    }
}

/// What macros expand to (RFC 7208 §7.3).
struct SPFMacroContext: Sendable {
    var sender: String           // local-part@domain
    var domain: String           // the <domain> of the record
    var client: IPAddress
    var helo: String
    var receiver: String
    var validatedDomain: String = "unknown"
    /// The %{i} nibbles of an IPv6 client in upper case (as the client address was written
    /// in upper case): the RFC 7208 test suite expects the spelling to follow the input.
    var upperNibbles = false

    var localPart: String {
        guard let at = sender.lastIndex(of: "@") else { return "postmaster" }
        let l = sender[..<at]
        return l.isEmpty ? "postmaster" : String(l)
    }
    var senderDomain: String {
        guard let at = sender.lastIndex(of: "@") else { return sender }
        return String(sender[sender.index(after: at)...])
    }

    func value(of letter: Character) -> String {
        switch letter {
        case "s": return sender
        case "l": return localPart
        case "o": return senderDomain
        case "d": return domain
        case "i":
            switch client {
            case .v4: return client.description
            case .v6(let hi, let lo):
                var nibbles: [String] = []
                for word in [hi, lo] {
                    for shift in stride(from: 60, through: 0, by: -4) { nibbles.append(String((word >> UInt64(shift)) & 0xF, radix: 16)) }
                }
                let dotted = nibbles.joined(separator: ".")
                return upperNibbles ? dotted.uppercased() : dotted
            }
        case "p": return validatedDomain
        case "v": return client.isV4 ? "in-addr" : "ip6"
        case "h": return helo
        case "c": return client.description
        case "r": return receiver
        case "t": return String(Int(Date().timeIntervalSince1970))
        default: return ""
        }
    }

    /// Expands an explanation string; nil when its syntax is invalid.
    func expand(_ text: String, explanation: Bool = true) -> String? {
        if SPFRecord.checkMacroString(text, explanation: explanation) != nil { return nil }
        var out = ""
        let chars = Array(text)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            guard c == "%" else { out.append(c); i += 1; continue }
            let n = chars[i + 1]
            switch n {
            case "%": out.append("%"); i += 2; continue
            case "_": out.append(" "); i += 2; continue
            case "-": out.append("%20"); i += 2; continue
            default: break
            }
            var j = i + 2
            let letterChar = chars[j]
            let letter = Character(letterChar.lowercased())
            j += 1
            var digits = ""
            while chars[j].isNumber { digits.append(chars[j]); j += 1 }
            var reverse = false
            if chars[j] == "r" || chars[j] == "R" { reverse = true; j += 1 }
            var delims = Set<Character>()
            while chars[j] != "}" { delims.insert(chars[j]); j += 1 }
            i = j + 1
            var value = self.value(of: letter)
            if !digits.isEmpty || reverse || !delims.isEmpty {
                let split = delims.isEmpty ? ["."] : delims
                var parts = value.split(omittingEmptySubsequences: false, whereSeparator: { split.contains($0) }).map(String.init)
                if reverse { parts.reverse() }
                if let keep = Int(digits), keep < parts.count { parts = Array(parts.suffix(keep)) }
                value = parts.joined(separator: ".")
            }
            if letterChar.isUppercase { value = SPFMacroContext.urlEscape(value) }
            out += value
        }
        return out
    }

    /// A domain-spec expanded into the name to ask for: no final dot, and cut from the
    /// left, label by label, to at most 253 octets (RFC 7208 §7.3).
    func expandDomain(_ spec: String) -> String? {
        guard var name = expand(spec, explanation: false) else { return nil }
        if name.hasSuffix(".") { name.removeLast() }
        while name.utf8.count > 253, let dot = name.firstIndex(of: ".") {
            name = String(name[name.index(after: dot)...])
        }
        return name
    }

    static func urlEscape(_ s: String) -> String {
        var out = ""
        for byte in s.utf8 {
            let c = Character(Unicode.Scalar(byte))
            if byte < 0x80, c.isLetter || c.isNumber || "-._~".contains(c) {
                out.append(c)
            } else {
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }
}
