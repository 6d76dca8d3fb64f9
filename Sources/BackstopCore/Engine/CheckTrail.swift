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
        /// The check's reason without a leading "check=" ("pass" for "spf=pass"), or "ok"
        /// when it had no opinion and said nothing.
        public let outcome: String
    }

    public init() {}

    mutating func append(check: String, reason: String) {
        var outcome = reason
        if outcome.isEmpty { outcome = "ok" } else if outcome.hasPrefix(check + "=") { outcome.removeFirst(check.count + 1) }
        let entry = Entry(check: check, outcome: outcome)
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
