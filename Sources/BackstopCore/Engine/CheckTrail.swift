// What every check that ran for a request said, in order, for the one decision line
// (`recipients=known_recipient spf=pass ratelimit=ok`). One small array per request: the
// trail rides in every copy of a decision, and kept inline (six optional pairs of strings)
// each copy and destruction went through every slot (~2,000 instructions per request in
// spf-peers); an array is one reference. More than `capacity` checks are counted, not kept.
// It decides nothing.

public struct CheckTrail: Sendable, Equatable {
    public static let capacity = 6
    /// The entries kept, in the order the checks ran.
    public private(set) var entries: [Entry] = []
    /// How many checks ran (may exceed `capacity`).
    public private(set) var count = 0

    public struct Entry: Sendable, Equatable {
        public let check: String
        /// The verdict's reason as the check gave it.
        public let reason: String

        /// The reason without a leading "check=" ("pass" for "spf=pass"), or "ok" when the
        /// check had no opinion and said nothing. Worked out only when a line is written.
        public var outcome: String {
            if reason.isEmpty { return "ok" }
            var rest = Substring(reason)
            guard rest.hasPrefix(check) else { return reason }
            rest = rest.dropFirst(check.count)
            return rest.first == "=" ? String(rest.dropFirst()) : reason
        }
    }

    public init() {}

    /// Keeps the two strings as they are (no work per request beyond storing them).
    mutating func append(check: String, reason: String) {
        if count < CheckTrail.capacity {
            if entries.isEmpty { entries.reserveCapacity(4) }
            entries.append(Entry(check: check, reason: reason))
        }
        count += 1
    }
}
