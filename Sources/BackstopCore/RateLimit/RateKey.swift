// What a rate-limit rule counts by: one request attribute or a combination such as
// `sasl_username+client_address`, turned into a compact byte string (the key). Client
// addresses are aggregated to a network (/32 and /64 by default) and stored as 4 or 16
// bytes; names and addresses are lowercased, a domain's trailing dot left out and a domain in
// U-labels keyed by its A-labels, so a change of case or an added dot cannot dodge a limit.
// This file builds and displays keys; counting happens in the stores.

/// One attribute a key can be made of.
public enum RateKeyPart: String, CaseIterable, Sendable, Hashable {
    case clientAddress = "client_address"
    case clientName = "client_name"
    case sender
    case senderDomain = "sender_domain"
    case saslUsername = "sasl_username"
    case recipient
    case recipientDomain = "recipient_domain"

    /// Whether the value ends in a domain (an address's or a host's), so its trailing dot is
    /// left out of the key.
    var endsInDomain: Bool {
        switch self {
        case .clientName, .sender, .senderDomain, .recipient, .recipientDomain: true
        case .clientAddress, .saslUsername: false
        }
    }

    /// Whether a value can hold a "+" (a local part, a SASL name): where an administrator's
    /// combined key has more "+" than the rule has parts, they belong to such a part.
    var mayHoldPlus: Bool {
        switch self {
        case .sender, .recipient, .saslUsername: true
        case .clientAddress, .clientName, .senderDomain, .recipientDomain: false
        }
    }

    var attribute: Attribute {
        switch self {
        case .clientAddress: .clientAddress
        case .clientName: .clientName
        case .sender, .senderDomain: .sender
        case .saslUsername: .saslUsername
        case .recipient, .recipientDomain: .recipient
        }
    }
}

/// The key definition of one rule.
public struct RateKeySpec: Sendable, Hashable, CustomStringConvertible {
    public let parts: [RateKeyPart]
    /// IPv4 client addresses count by this network prefix (32: each address alone).
    public let ipv4Prefix: Int
    /// IPv6 client addresses count by this network prefix (64: one customer's /64 together).
    public let ipv6Prefix: Int

    public init(parts: [RateKeyPart], ipv4Prefix: Int = 32, ipv6Prefix: Int = 64) {
        self.parts = parts
        self.ipv4Prefix = ipv4Prefix
        self.ipv6Prefix = ipv6Prefix
    }

    /// Parses "client_address" or "sasl_username+client_address"; nil with a message when wrong.
    public static func parseParts(_ text: String) -> Result<[RateKeyPart], KeyParseError> {
        let names = text.split(separator: "+", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
        var parts: [RateKeyPart] = []
        for name in names {
            guard let part = RateKeyPart(rawValue: name.lowercased()) else {
                return .failure(KeyParseError(message: "unknown key part \"\(LogEscaping.escape(name))\": use "
                    + RateKeyPart.allCases.map(\.rawValue).joined(separator: ", ")
                    + ", or several joined with + (e.g. \"sasl_username+client_address\")"))
            }
            guard !parts.contains(part) else {
                return .failure(KeyParseError(message: "\"\(part.rawValue)\" appears twice in the key"))
            }
            parts.append(part)
        }
        return .success(parts)
    }

    public struct KeyParseError: Error, Sendable { public let message: String }

    public var description: String { parts.map(\.rawValue).joined(separator: "+") }

    /// Appends this rule's key for `request` to `out`. Returns false (and leaves `out` in an
    /// unspecified state) when the request has no value for a part, so the rule does not apply.
    public func build(from request: PolicyRequest, into out: inout [UInt8]) -> Bool {
        for part in parts {
            let ok: Bool? = request.withValueBytes(part.attribute) { value -> Bool in
                switch part {
                case .sender:
                    // The null sender is a key of its own.
                    append(part, value, to: &out)
                    return true
                case .senderDomain, .recipientDomain:
                    guard !value.isEmpty else { return false }
                    let domain: UnsafeRawBufferPointer
                    if let at = value.lastIndex(of: UInt8(ascii: "@")) {
                        domain = UnsafeRawBufferPointer(rebasing: value[(at + 1)...])
                    } else {
                        domain = UnsafeRawBufferPointer(rebasing: value[value.endIndex...])
                    }
                    append(part, domain, to: &out)
                    return true
                default:
                    guard !value.isEmpty else { return false }
                    append(part, value, to: &out)
                    return true
                }
            }
            guard ok == true else { return false }
        }
        return true
    }

    /// Builds the key from values written by an administrator, one per part in order
    /// (`status` uses this): a domain part takes the domain itself, `<>` is the null sender,
    /// a client address may be given as the address or as the network the log shows
    /// ("198.51.100.0/24" for a rule counting by /24).
    public func build(values: [String]) -> Result<[UInt8], KeyParseError> {
        let shape = parts.map(\.rawValue).joined(separator: "+")
        guard values.count == parts.count else {
            return .failure(KeyParseError(message: "this rule counts by \(shape): give \(parts.count) value(s) joined by +"))
        }
        var out: [UInt8] = []
        for (part, text) in zip(parts, values) {
            var value = text.trimmingSpaces
            if part == .sender, value == "<>" { value = "" }
            if part == .sender, value.hasPrefix("<"), value.hasSuffix(">") { value = String(value.dropFirst().dropLast()) }
            if part != .sender, value.isEmpty {
                return .failure(KeyParseError(message: "the \(part.rawValue) value is empty (this rule counts by \(shape))"))
            }
            if part == .clientAddress {
                guard let network = CIDR(value) else {
                    return .failure(KeyParseError(message: "\"\(LogEscaping.escape(value))\" is not an IP address or network"))
                }
                let counted = network.network.isV4 ? ipv4Prefix : ipv6Prefix
                let full = network.network.isV4 ? 32 : 128
                guard network.prefix == full || network.prefix == counted else {
                    return .failure(KeyParseError(message: "this rule counts client addresses by /\(counted): give an address or a /\(counted) network"))
                }
                value = network.network.description
            }
            var bytes = Array(value.utf8)
            bytes.withUnsafeMutableBytes { append(part, UnsafeRawBufferPointer($0), to: &out) }
        }
        return .success(out)
    }

    /// Appends one component: a two-byte length, then the bytes (so "a+b"+"c" and "a"+"b+c"
    /// are different keys). Values longer than 65535 bytes are cut there.
    private func append(_ part: RateKeyPart, _ value: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        if part == .clientAddress,
           let address = IPAddress(dottedQuad: value) ?? IPAddress(String(decoding: value, as: UTF8.self)) {
            // Binary form, tagged with a leading NUL (a request value never starts with one).
            switch address.masked(to: address.isV4 ? ipv4Prefix : ipv6Prefix) {
            case .v4(let a):
                out.append(contentsOf: [0, 7, 0, 4])
                for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: a >> UInt32(shift))) }
                out.append(UInt8(ipv4Prefix))
            case .v6(let hi, let lo):
                out.append(contentsOf: [0, 19, 0, 6])
                for word in [hi, lo] {
                    for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
                }
                out.append(UInt8(ipv6Prefix))
            }
            return
        }
        if part.endsInDomain, !ASCII.check(value), let keyed = Self.aLabelForm(part, value) {
            return keyed.withUnsafeBytes { append(part, $0, to: &out) }
        }
        let value = part.endsInDomain ? Self.withoutRootDot(value) : value
        let length = min(value.count, 65535)
        out.append(UInt8(length >> 8))
        out.append(UInt8(length & 0xFF))
        // One copy, then ASCII lowercase in place: addresses, domains and user names are
        // compared without case (an append per octet cost ~15 instructions each).
        let start = out.count
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: value.prefix(length)))
        out.withUnsafeMutableBufferPointer { ASCII.lowercase(UnsafeMutableBufferPointer(rebasing: $0[start...])) }
    }

    /// A domain's one trailing dot (the root) names the same domain: "a@example.org." and
    /// "a@example.org" are one key, so appending a dot cannot dodge a limit either.
    static func withoutRootDot(_ value: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard value.count > 1, value.last == UInt8(ascii: "."), value[value.count - 2] != UInt8(ascii: "."),
              value[value.count - 2] != UInt8(ascii: "@") else { return value }
        return UnsafeRawBufferPointer(rebasing: value.dropLast())
    }

    /// A value whose domain has U-labels, with the domain in its A-label form (lowercase, no
    /// trailing dot: DomainName.asciiForm, as the recipients check keys domains), so that
    /// "BÜCHER.example", "bücher.example" and "xn--bcher-kva.example" are one key; the local
    /// part of an address stays as written. Nil when there is no domain to convert or it
    /// cannot be converted (then the value is keyed as written).
    static func aLabelForm(_ part: RateKeyPart, _ value: UnsafeRawBufferPointer) -> [UInt8]? {
        var start = 0
        if part == .sender || part == .recipient {
            guard let at = value.lastIndex(of: UInt8(ascii: "@")) else { return nil }
            start = at + 1
        }
        let domain = UnsafeRawBufferPointer(rebasing: value[start...])
        // No domain name is longer than 253 octets in A-labels nor 4 × 253 in UTF-8: longer
        // text is keyed as written, without converting its labels one by one.
        guard domain.count <= 4 * 253, !ASCII.check(domain),
              let ascii = DomainName.asciiForm(String(decoding: domain, as: UTF8.self)) else { return nil }
        return Array(value[..<start]) + Array(ascii.utf8)
    }

    /// A key a shared store keeps by its digest (one too long for its index): "sha256:" and
    /// 64 lowercase hex digits. No built key starts so ("sh" would be a first part of 29,544
    /// octets, beyond the longest key kept as it is), so the form is listed, and taken by
    /// `status` and `reset`, as it is.
    public static let digestPrefix = Array("sha256:".utf8)

    public static func isDigestForm(_ key: [UInt8]) -> Bool {
        key.count == digestPrefix.count + 64 && key.starts(with: digestPrefix)
            && key.dropFirst(digestPrefix.count).allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// The key as an administrator reads it: "192.0.2.0/24+alice"; a digest form as it is.
    public func display(_ key: [UInt8]) -> String {
        if Self.isDigestForm(key) { return String(decoding: key, as: UTF8.self) }
        var components: [String] = []
        var index = 0
        for part in parts {
            guard index + 2 <= key.count else { break }
            let length = Int(key[index]) << 8 | Int(key[index + 1])
            index += 2
            guard index + length <= key.count else { break }
            let bytes = key[index..<(index + length)]
            index += length
            components.append(Self.render(part, bytes))
        }
        return components.joined(separator: "+")
    }

    private static func render(_ part: RateKeyPart, _ bytes: ArraySlice<UInt8>) -> String {
        if part == .clientAddress, bytes.first == 0, bytes.count >= 2 {
            let b = Array(bytes)
            if b[1] == 4, b.count == 7 {
                let address = IPAddress.v4(UInt32(b[2]) << 24 | UInt32(b[3]) << 16 | UInt32(b[4]) << 8 | UInt32(b[5]))
                return b[6] == 32 ? "\(address)" : "\(address)/\(b[6])"
            }
            if b[1] == 6, b.count == 19 {
                var hi: UInt64 = 0, lo: UInt64 = 0
                for i in 0..<8 { hi = hi << 8 | UInt64(b[2 + i]) }
                for i in 0..<8 { lo = lo << 8 | UInt64(b[10 + i]) }
                return b[18] == 128 ? "\(IPAddress.v6(hi, lo))" : "\(IPAddress.v6(hi, lo))/\(b[18])"
            }
        }
        if part == .sender, bytes.isEmpty { return "<>" }
        return String(decoding: bytes, as: UTF8.self)
    }
}
