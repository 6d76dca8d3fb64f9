// Normalisation of a recipient address into the byte form the table stores, following
// what Postfix does before a table lookup: domain lowercased in A-label form without a
// trailing dot, local part unquoted and (by default) lowercased, BATV (prvs=) tags
// removed, and the position of an address extension found (recipient_delimiter).
// ASCII addresses are handled in place in a caller-supplied buffer with no allocation;
// SMTPUTF8 addresses (any byte ≥ 0x80) take a slower path through String that does
// allocate. This file does not look anything up.

import Foundation

/// How addresses are compared. Table keys use `caseSensitiveLocalPart`; the extension
/// and BATV rules only apply to the addresses being looked up.
public struct RecipientNormalisation: Sendable, Equatable {
    /// Postfix's `case_sensitive_local_part`-like switch: false (the default) folds case.
    public var caseSensitiveLocalPart: Bool
    /// Every character of Postfix's `recipient_delimiter` (e.g. "+" or "+-"); empty: no extensions.
    public var recipientDelimiters: [UInt8]
    /// Remove BATV tags (`prvs=TAG=user@…`, `prvs=user=TAG@…`) before the lookup.
    public var stripBATV: Bool

    public init(caseSensitiveLocalPart: Bool = false, recipientDelimiter: String = "", stripBATV: Bool = true) {
        self.caseSensitiveLocalPart = caseSensitiveLocalPart
        self.recipientDelimiters = Array(recipientDelimiter.utf8)
        self.stripBATV = stripBATV
    }
}

/// Where the parts of a normalised address are in the output buffer: `local@domain`,
/// with `localLength` octets before the "@".
struct NormalisedAddress {
    var length: Int
    var localLength: Int
    /// Offset of the first delimiter in the local part when the address has an extension
    /// that Postfix would strip (see `split_addr`), else nil.
    var extensionAt: Int?
}

enum AddressNormaliser {
    /// Why a table key was refused; addresses being looked up simply do not match.
    enum Failure: Error, CustomStringConvertible {
        case noAt, emptyDomain, badDomain(String), invalidUTF8(Int), unterminatedQuote, emptyQuotedLocalPart
        var description: String {
            switch self {
            case .noAt: "is neither user@domain nor @domain (a bare user, virtual(5)'s form for $myorigin, must be written user@domain)"
            case .emptyDomain: "has an empty domain"
            case .badDomain(let d): "has a domain that cannot be converted to its IDNA A-label form (\(d))"
            case .invalidUTF8(let offset): "is not valid UTF-8 (at octet \(offset + 1) of the key): save the file as UTF-8"
            case .unterminatedQuote: "has a quoted local part without its closing quote"
            case .emptyQuotedLocalPart: "has an empty quoted local part (\"\"@domain); write @domain for a catch-all"
            }
        }
    }

    /// The capacity `normalise` may need for an input of `count` octets: the address,
    /// plus room for the extension-stripped copy that lookups build behind it.
    static func scratchCapacity(_ count: Int) -> Int { 2 * count + 8 }

    /// Normalises `input` and hands the result to `body` together with the buffer holding
    /// it; the buffer has room for `scratchCapacity` of the normalised length, so lookups
    /// can build the extension-stripped copy behind the address. Lookup mode (`forLookup`)
    /// also strips angle brackets and BATV tags and finds the extension.
    static func withNormalised<R>(_ input: UnsafeRawBufferPointer, rules: RecipientNormalisation, forLookup: Bool,
                                  _ body: (Result<NormalisedAddress, Failure>, UnsafeMutablePointer<UInt8>) -> R) -> R {
        // A lookup's angle brackets come off here, once, for both paths below.
        var input = input
        if forLookup, input.count >= 2, input.first == UInt8(ascii: "<"), input.last == UInt8(ascii: ">") {
            input = UnsafeRawBufferPointer(rebasing: input.dropFirst().dropLast())
        }
        var hasHighBit = false
        for byte in input where byte >= 0x80 { hasHighBit = true; break }
        if !hasHighBit {
            return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: scratchCapacity(input.count)) { buffer in
                let out = buffer.baseAddress!
                return body(normaliseASCIIDomain(input, into: out, rules: rules, forLookup: forLookup), out)
            }
        }
        // SMTPUTF8: fold case and convert the domain with String (this allocates), then
        // take the same path as ASCII addresses.
        switch prepareUnicode(input, rules: rules) {
        case .failure(let failure):
            return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1) { body(.failure(failure), $0.baseAddress!) }
        case .success(let prepared):
            return prepared.withUnsafeBytes { bytes in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: scratchCapacity(bytes.count)) { buffer in
                    let out = buffer.baseAddress!
                    return body(normaliseASCIIDomain(bytes, into: out, rules: rules, forLookup: forLookup), out)
                }
            }
        }
    }

    /// Decodes, validates and case-folds a non-ASCII address (its angle brackets already
    /// off); the domain becomes A-labels.
    static func prepareUnicode(_ input: UnsafeRawBufferPointer, rules: RecipientNormalisation) -> Result<[UInt8], Failure> {
        if let offset = firstInvalidUTF8(input) { return .failure(.invalidUTF8(offset)) }
        // Split by octets: an "@" followed by a combining mark is one Character, and would
        // hide from a Character search.
        let body = input[...]
        guard let at = body.lastIndex(of: UInt8(ascii: "@")) else { return .failure(.noAt) }
        var local = String(decoding: body[..<at], as: UTF8.self).precomposedStringWithCanonicalMapping
        if !rules.caseSensitiveLocalPart { local = foldCase(local) }
        let domainText = String(decoding: body[(at + 1)...], as: UTF8.self)
        guard !domainText.isEmpty, domainText != "." else { return .failure(.emptyDomain) }
        guard let domain = DomainName.asciiForm(domainText) else {
            return .failure(.badDomain(LogEscaping.escape(domainText)))
        }
        return .success(Array(local.utf8) + [UInt8(ascii: "@")] + Array(domain.utf8))
    }

    /// Characters whose case folding (Unicode CaseFolding.txt, full: what Postfix's
    /// casefold_utf8 applies through ICU) differs from their lower case, in the scripts
    /// mail addresses use: `straße` and `STRASSE` are one mailbox for Postfix.
    static let foldings: [Character: String] = [
        "ß": "ss", "ẞ": "ss", "ς": "σ", "ϐ": "β", "ϑ": "θ", "ϕ": "φ", "ϖ": "π", "ϰ": "κ", "ϱ": "ρ", "ϵ": "ε",
        "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st", "ẛ": "ṡ", "ſ": "s",
    ]

    /// Lower case, then the full foldings above (for a local part that is not ASCII).
    static func foldCase(_ text: String) -> String {
        let lowered = text.lowercased()
        guard lowered.contains(where: { foldings[$0] != nil }) else { return lowered }
        var out = ""
        for character in lowered { if let folded = foldings[character] { out += folded } else { out.append(character) } }
        return out
    }

    /// Offset of the first octet that is not part of a valid UTF-8 sequence, or nil.
    static func firstInvalidUTF8(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var decoder = UTF8()
        var iterator = bytes.makeIterator()
        var offset = 0
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar): offset += UTF8.width(scalar)
            case .emptyInput: return nil
            case .error: return offset
            }
        }
    }

    /// The allocation-free path: the domain is ASCII (A-labels); the local part may hold
    /// UTF-8 that was already case-folded by `prepareUnicode`. Angle brackets are already off.
    static func normaliseASCIIDomain(_ input: UnsafeRawBufferPointer, into out: UnsafeMutablePointer<UInt8>,
                                     rules: RecipientNormalisation, forLookup: Bool) -> Result<NormalisedAddress, Failure> {
        let end = input.count
        // The last "@" separates the domain: a quoted local part may contain "@" itself.
        guard let at = input.lastIndex(of: UInt8(ascii: "@")) else { return .failure(.noAt) }
        let octets = input.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var domainEnd = end
        if domainEnd > at + 1, input[domainEnd - 1] == UInt8(ascii: ".") { domainEnd -= 1 }
        guard domainEnd > at + 1 else { return .failure(.emptyDomain) }

        // Local part: unquote "john doe" (RFC 5321 quoted-string, backslash escapes).
        var length = 0
        if at >= 2, input[0] == UInt8(ascii: "\"") {
            guard input[at - 1] == UInt8(ascii: "\"") else { return .failure(.unterminatedQuote) }
            var i = 1
            while i < at - 1 {
                var b = input[i]
                if b == UInt8(ascii: "\\"), i + 1 < at - 1 { i += 1; b = input[i] }
                out[length] = b
                length += 1
                i += 1
            }
            // In a table, ""@domain must not silently become the catch-all @domain.
            if length == 0 && !forLookup { return .failure(.emptyQuotedLocalPart) }
        } else {
            out.update(from: octets, count: at)
            length = at
        }
        if forLookup && rules.stripBATV {
            length = stripBATV(out, length: length)
        }
        if !rules.caseSensitiveLocalPart {
            ASCII.lowercase(UnsafeMutableBufferPointer(start: out, count: length))
        }
        let localLength = length
        out[length] = UInt8(ascii: "@")
        length += 1
        let domainStart = length
        (out + domainStart).update(from: octets + at + 1, count: domainEnd - at - 1)
        length += domainEnd - at - 1
        ASCII.lowercase(UnsafeMutableBufferPointer(start: out + domainStart, count: length - domainStart))
        var extensionAt: Int?
        if forLookup && !rules.recipientDelimiters.isEmpty {
            extensionAt = splitPoint(out, localLength: localLength, delimiters: rules.recipientDelimiters)
        }
        return .success(NormalisedAddress(length: length, localLength: localLength, extensionAt: extensionAt))
    }

    /// Postfix's split_addr(): where the extension starts, or nil when the address must
    /// not be split (postmaster, mailer-daemon, double-bounce, owner-foo and foo-request
    /// when "-" is a delimiter, no delimiter, or an empty result).
    static func splitPoint(_ local: UnsafeMutablePointer<UInt8>, localLength: Int, delimiters: [UInt8]) -> Int? {
        let part = UnsafeBufferPointer(start: local, count: localLength)
        if equalsIgnoringCase(part, "postmaster") || equalsIgnoringCase(part, "mailer-daemon")
            || equalsIgnoringCase(part, "double-bounce") { return nil }
        if delimiters.contains(UInt8(ascii: "-")) {
            if hasPrefixIgnoringCase(part, "owner-") { return nil }
            if localLength > 8, equalsIgnoringCase(UnsafeBufferPointer(rebasing: part[(localLength - 8)...]), "-request") {
                return nil
            }
        }
        var i = 0
        while i < localLength, !delimiters.contains(part[i]) { i += 1 }
        if i == 0 || i == localLength { return nil }
        return i
    }

    static func equalsIgnoringCase(_ bytes: UnsafeBufferPointer<UInt8>, _ word: StaticString) -> Bool {
        guard bytes.count == word.utf8CodeUnitCount else { return false }
        return hasPrefixIgnoringCase(bytes, word)
    }

    static func hasPrefixIgnoringCase(_ bytes: UnsafeBufferPointer<UInt8>, _ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard bytes.count >= count else { return false }
        let w = word.utf8Start
        for i in 0..<count where ASCII.lowercase(bytes[i]) != ASCII.lowercase(w[i]) { return false }
        return true
    }

    /// A BATV tag-val (draft-levine-smtp-batv): K DDD SSSSSS — a key digit, three digits of
    /// day, six hex digits of hash: ten characters.
    static func isBATVTag(_ p: UnsafeMutablePointer<UInt8>) -> Bool {
        for i in 0..<4 where !(p[i] >= 0x30 && p[i] <= 0x39) { return false }
        for i in 4..<10 {
            let c = ASCII.lowercase(p[i])
            if !((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66)) { return false }
        }
        return true
    }

    /// Removes a prvs= tag in place and returns the new length of the local part. Both forms
    /// are recognised: `prvs=TAG=user` (the draft) and `prvs=user=TAG` (older senders).
    static func stripBATV(_ local: UnsafeMutablePointer<UInt8>, length: Int) -> Int {
        let prefix = 5  // "prvs="
        guard length > prefix + 10 + 1,
              hasPrefixIgnoringCase(UnsafeBufferPointer(start: local, count: length), "prvs=") else { return length }
        if isBATVTag(local + prefix), local[prefix + 10] == UInt8(ascii: "=") {
            let coreStart = prefix + 11
            let coreLength = length - coreStart
            guard coreLength > 0 else { return length }
            local.update(from: local + coreStart, count: coreLength)
            return coreLength
        }
        let tagStart = length - 10
        if local[tagStart - 1] == UInt8(ascii: "="), isBATVTag(local + tagStart) {
            let coreLength = tagStart - 1 - prefix
            guard coreLength > 0 else { return length }
            local.update(from: local + prefix, count: coreLength)
            return coreLength
        }
        return length
    }
}
