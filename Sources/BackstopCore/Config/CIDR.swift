// IPv4 and IPv6 networks in CIDR form, for allow-lists, trusted networks and rate-limit
// aggregation. An IPv4-mapped IPv6 address (::ffff:192.0.2.1) matches the IPv4 network it
// maps, because Postfix may report either form. Addresses themselves: IPAddress.swift.

import Foundation

public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public let network: IPAddress
    public let prefix: Int

    /// Parses "192.0.2.0/24", "2001:db8::/32" or a single address (a host network).
    public init?(_ text: String) {
        let parts = text.trimmingSpaces.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let address = IPAddress(String(first)) else { return nil }
        // "::ffff:10.0.0.0/104" names the IPv4 network 10.0.0.0/8 once unmapped: its prefix
        // counts the 96 bits of the mapping, so it must be 96 or more ("/8" would name all
        // of IPv4 and is refused).
        let mapped = address.isV4 && first.contains(":")
        var prefix = address.isV4 ? 32 : 128
        if parts.count == 2 {
            guard parts[1].allSatisfy(\.isASCIIDigit), let p = Int(parts[1]) else { return nil }
            if mapped {
                guard (96...128).contains(p) else { return nil }
                prefix = p - 96
            } else {
                guard (0...prefix).contains(p) else { return nil }
                prefix = p
            }
        }
        self.prefix = prefix
        self.network = address.masked(to: prefix)
    }

    public func contains(_ address: IPAddress) -> Bool {
        switch (network, address) {
        case (.v4, .v4), (.v6, .v6): address.masked(to: prefix) == network
        default: false
        }
    }

    public var description: String { "\(network)/\(prefix)" }

    public static let loopback: [CIDR] = [CIDR("127.0.0.0/8")!, CIDR("::1/128")!]
}

/// A set of networks, e.g. an allow-list.
public struct NetworkList: Sendable, Equatable {
    public let networks: [CIDR]
    public init(_ networks: [CIDR]) { self.networks = networks }
    public var isEmpty: Bool { networks.isEmpty }
    public func contains(_ address: IPAddress) -> Bool { networks.contains { $0.contains(address) } }
    public func contains(_ text: String) -> Bool {
        guard let address = IPAddress(text) else { return false }
        return contains(address)
    }
}
