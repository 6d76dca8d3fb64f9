// The numbers of a rate limit as administrators write them, in `[[ratelimit.rule]]` and in
// override tables: "200/1h", "50M/1d", "5000/1d burst 500" (counts with k/M/G, durations as
// DurationText reads them), checked into GCRA parameters. Everything here is checked
// arithmetic on text from outside: a value too large is a problem, never a trap. It needs
// no NIO, so the override-table fuzzer compiles it; reading a whole rule is in
// RateLimitRule.swift, an override table in RateOverrides.swift.

public enum RateLimitText {
    public struct Problem: Error, Sendable { public let message: String }

    /// The bucket for a limit, or why it cannot be counted.
    public static func makeParameters(count: Int64, period: Int64, burst: Int64) -> Result<GCRAParameters, Problem> {
        guard let parameters = GCRAParameters(count: count, period: period, burst: burst) else {
            return .failure(Problem(message: "too fine or too large: the duration divided by the count must be at least 1ns and burst × that at most 146 years"))
        }
        if parameters.emissionInterval < 1000, period % count != 0 {
            return .failure(Problem(message: "too fine to count exactly: the duration divided by the count must be at least 1µs (or divide exactly); use a longer duration"))
        }
        return .success(parameters)
    }

    /// "200/1h", "200 / 1h", "50M/1d", "10/m" → (count, period ns).
    public static func parseLimit(_ text: String) -> (Int64, Int64)? {
        let halves = text.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count == 2, let count = parseCount(String(halves[0])) else { return nil }
        var periodText = halves[1].trimmingSpaces
        // "10/m" means one minute; ".5h" is half an hour, not "1.5h".
        if let first = periodText.first, first.isLetter { periodText = "1" + periodText }
        guard let period = DurationText.nanoseconds(periodText), period > 0 else { return nil }
        return (count, period)
    }

    /// A positive count with an optional decimal suffix: k (×1000), M (×10⁶), G (×10⁹).
    public static func parseCount(_ text: String) -> Int64? {
        var t = text.trimmingSpaces
        var multiplier: Int64 = 1
        switch t.last {
        case "k", "K": multiplier = 1_000
        case "m", "M": multiplier = 1_000_000
        case "g", "G": multiplier = 1_000_000_000
        default: break
        }
        if multiplier != 1 { t = String(t.dropLast()).trimmingSpaces }
        guard let n = Int64(t), n > 0 else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : v
    }
}
