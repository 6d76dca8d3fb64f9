// A rule's overrides table (`overrides = "FILE"` in a `[[ratelimit.rule]]`): per key, a
// limit of its own or `exempt`, in the source format of a Postfix lookup table:
//   newsletter@example.org   5000/1d
//   alice                    exempt
//   192.0.2.0/24             1000/1h      (client_address rules: an address or a network)
// Keys are written as the rule's key reads (lowercase does not matter; `<>` is the null
// sender); for a client_address rule the most specific network that holds the client's own
// address wins, and no network may be narrower than the rule's ipv4_prefix / ipv6_prefix.
// The file is watched like the recipient table (WatchedTable): a broken edit keeps the last
// good version. This file parses and looks up; RateLimitCheck applies it.

public struct RateOverrides: Sendable {
    public enum Limit: Sendable, Equatable {
        case exempt
        case limit(Override)
    }

    /// A limit of its own for some keys of the rule.
    public struct Override: Sendable, Equatable {
        public let limitCount: Int64
        public let period: Int64
        public let parameters: GCRAParameters

        public var description: String {
            "\(limitCount) per \(DurationText.format(nanoseconds: period)) (burst \(parameters.burst))"
        }
    }

    /// Where an entry came from, for status lines.
    public struct Entry: Sendable, Equatable {
        public let limit: Limit
        public let line: Int
    }

    let file: String
    /// Keys as the rule builds them.
    private var exact: [[UInt8]: Entry] = [:]
    /// client_address rules: networks by prefix length, longest first, per address family.
    private var v4Networks: [(prefix: Int, entries: [IPAddress: Entry])] = []
    private var v6Networks: [(prefix: Int, entries: [IPAddress: Entry])] = []
    /// Keys in force (an entry whose key an earlier line already named replaced that one).
    public private(set) var count = 0

    /// Most entries in one overrides file.
    public static let maxEntries = 100_000
    /// The largest overrides file read.
    public static let maxFileBytes = 16 << 20

    /// The override for a request's key, or nil when the rule's own limit applies.
    public func lookup(key: [UInt8], client: IPAddress?) -> Entry? {
        if let entry = exact[key] { return entry }
        guard let client else { return nil }
        for group in client.isV4 ? v4Networks : v6Networks {
            if let entry = group.entries[client.masked(to: group.prefix)] { return entry }
        }
        return nil
    }

    /// Reads one file for a rule counting by `spec`; every problem is an issue with its line.
    static func parse(_ bytes: [UInt8], file: String, spec: RateKeySpec) -> (RateOverrides, [ConfigIssue]) {
        var table = RateOverrides(file: file)
        var issues: [ConfigIssue] = []
        var v4: [Int: [IPAddress: Entry]] = [:], v6: [Int: [IPAddress: Entry]] = [:]
        func report(_ line: Int, _ message: String) {
            if issues.count < 50 { issues.append(ConfigIssue(file: file, line: line, key: "", message: message)) }
        }
        let byAddress = spec.parts == [.clientAddress]
        var read = 0
        bytes.withUnsafeBufferPointer { text in
            LookupTableText.forEachEntry(text, report: report) { entry in
                let key = String(decoding: text[entry.key], as: UTF8.self)
                let value = LookupTableText.value(of: entry, in: text)
                guard read < maxEntries else {
                    return report(entry.line, "more than \(maxEntries) overrides: split the rule")
                }
                let limit: Limit
                switch Self.limit(value) {
                case .success(let parsed): limit = parsed
                case .failure(let problem): return report(entry.line, "\"\(LogEscaping.escape(value, limit: 80))\": \(problem.message)")
                }
                let found = Entry(limit: limit, line: entry.line)
                if byAddress {
                    guard let network = CIDR(key) else {
                        return report(entry.line, "\"\(LogEscaping.escape(key, limit: 120))\" is not an IP address or network (this rule counts by client_address)")
                    }
                    // One key is one count: a narrower network would give part of a key
                    // another limit than the rest (and one client's refusals would reset the
                    // state the other's larger limit had used).
                    let counted = network.network.isV4 ? spec.ipv4Prefix : spec.ipv6Prefix
                    guard network.prefix <= counted else {
                        return report(entry.line, "\"\(LogEscaping.escape(key, limit: 120))\" is narrower than one client of this rule (it counts /\(counted) networks as one): write \(network.network.masked(to: counted))/\(counted)")
                    }
                    if network.network.isV4 { v4[network.prefix, default: [:]][network.network] = found }
                    else { v6[network.prefix, default: [:]][network.network] = found }
                } else {
                    switch spec.build(values: [key]) {
                    case .success(let bytes): table.exact[bytes] = found
                    case .failure(let error): return report(entry.line, error.message)
                    }
                }
                read += 1
            }
        }
        table.v4Networks = v4.sorted { $0.key > $1.key }.map { ($0.key, $0.value) }
        table.v6Networks = v6.sorted { $0.key > $1.key }.map { ($0.key, $0.value) }
        table.count = table.exact.count + v4.values.reduce(0) { $0 + $1.count } + v6.values.reduce(0) { $0 + $1.count }
        return (table, issues)
    }

    /// "exempt", or a limit "COUNT/DURATION" with an optional "burst N".
    static func limit(_ value: String) -> Result<Limit, RateLimitText.Problem> {
        let words = value.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        if words.count == 1, words[0].lowercased() == "exempt" { return .success(.exempt) }
        guard let first = words.first, let (count, period) = RateLimitText.parseLimit(first),
              words.count == 1 || (words.count == 3 && words[1].lowercased() == "burst") else {
            return .failure(.init(message: "expected \"exempt\" or a limit such as \"5000/1d\" (optionally \"5000/1d burst 500\")"))
        }
        var burst = count
        if words.count == 3 {
            guard let b = RateLimitText.parseCount(words[2]) else { return .failure(.init(message: "the burst is not a positive count")) }
            burst = b
        }
        return RateLimitText.makeParameters(count: count, period: period, burst: burst).map {
            .limit(Override(limitCount: count, period: period, parameters: $0))
        }
    }
}
