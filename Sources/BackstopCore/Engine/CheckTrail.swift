// What every check that ran for a request said, in order, for the one decision line
// (`recipients=known_recipient spf=pass ratelimit=ok`). Kept inline, without allocating,
// since it rides on every decision; more than `capacity` checks are counted, not kept.
// It decides nothing.

public struct CheckTrail: Sendable, Equatable {
    public static let capacity = 6
    private var e0, e1, e2, e3, e4, e5: Entry?
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
        let entry = Entry(check: check, reason: reason)
        switch count {
        case 0: e0 = entry
        case 1: e1 = entry
        case 2: e2 = entry
        case 3: e3 = entry
        case 4: e4 = entry
        case 5: e5 = entry
        default: break
        }
        count += 1
    }

    /// The entries kept, in the order the checks ran.
    public var entries: [Entry] { [e0, e1, e2, e3, e4, e5].compactMap { $0 } }
}
