// A configured list of mail addresses, as several checks take them (bounces'
// no_reply_addresses, batv's exempt and exclude_senders): `user@domain`, `@domain` for a
// whole domain and, where the key allows it, a bare `user` for that mailbox in every
// domain. Matching folds case, compares domains in their A-label form and, with the
// recipients' delimiters, ignores an address extension. This file reads and matches lists; it
// decides nothing.

public struct AddressList: Sendable, Equatable {
    public private(set) var addresses: Set<String> = []
    public private(set) var domains: Set<String> = []
    public private(set) var localParts: Set<String> = []
    /// Characters that start an address extension (`[recipients] recipient_delimiter`): an
    /// address not listed as written matches by its local part cut at the first of them
    /// (`noreply+x@example.org` as `noreply@example.org`).
    public var delimiters: [UInt8] = []

    public init() {}

    /// Reads `key` of `section`; a bare local part is accepted only with `localParts`.
    public init(reading section: ConfigSection, key: String, default fallback: [String], localParts allowLocal: Bool) {
        for entry in section.stringArray(key, default: fallback) {
            let item = entry.trimmingSpaces.lowercased()
            // Split and searched by octets, as `contains` splits what it is asked about.
            let parts = Octets.splitAddress(item)
            if let (local, domainPart) = parts, !domainPart.isEmpty, !local.utf8.contains(UInt8(ascii: "@")),
               let domain = Self.domainForm(domainPart) {
                if local.isEmpty { domains.insert(domain) } else { addresses.insert(local + "@" + domain) }
            } else if parts == nil, allowLocal, !item.isEmpty, !item.utf8.contains(UInt8(ascii: " ")) {
                localParts.insert(item)
            } else {
                let forms = allowLocal ? "user@example.org, @example.org for a whole domain, or user for that mailbox in every domain"
                                       : "user@example.org, or @example.org for a whole domain"
                section.report(key, "\"\(LogEscaping.escape(entry))\" is not an address: write \(forms)")
            }
        }
    }

    public var isEmpty: Bool { addresses.isEmpty && domains.isEmpty && localParts.isEmpty }

    /// True when `address` (any case) is listed, its domain is, or its local part is.
    public func contains(_ address: String) -> Bool {
        if isEmpty { return false }
        let lowered = address.lowercased()
        guard let (local, domainPart) = Octets.splitAddress(lowered), let domain = Self.domainForm(domainPart) else {
            return false
        }
        if domains.contains(domain) || localParts.contains(String(local)) || addresses.contains(local + "@" + domain) { return true }
        guard !delimiters.isEmpty, let cut = local.utf8.firstIndex(where: { delimiters.contains($0) }), cut != local.startIndex else {
            return false
        }
        let base = local[..<cut]
        return localParts.contains(String(base)) || addresses.contains(base + "@" + domain)
    }

    /// Domains are compared in their A-label form, without a trailing dot.
    static func domainForm(_ domain: Substring) -> String? {
        var d = domain
        if d.hasSuffix(".") { d = d.dropLast() }
        guard !d.isEmpty else { return nil }
        return d.utf8.contains { $0 >= 0x80 } ? DomainName.asciiForm(String(d)) : String(d)
    }
}
