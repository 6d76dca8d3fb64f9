// Durations as administrators write them ("250ms", "5s", "2m", "1h", "1d"), in the
// configuration and in rate-limit override tables, and as Backstop writes them back in
// messages. Parsing is checked arithmetic on text from outside: a number too large for
// nanoseconds in an Int64 (about 292 years) is not a duration, never a trap. The core works
// in nanoseconds without NIO so the override-table fuzzer can compile it; the TimeAmount
// forms the server uses are below it. It does not range-check (ConfigSection does).

#if canImport(NIOCore)
import NIOCore
#endif

public enum DurationText {
    /// The nanoseconds `text` names, or nil when it is not a duration or does not fit an Int64.
    public static func nanoseconds(_ text: String) -> Int64? {
        let t = text.trimmingSpaces.lowercased()
        let units: [(String, Int64)] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000),
                                         ("h", 3_600_000_000_000), ("d", 86_400_000_000_000)]
        for (suffix, nanos) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count)
            if let n = Int64(number) { return n >= 0 ? checked(n, nanos) : nil }
            // A fraction ("1.5h"); strictly below 2^63 so the conversion cannot trap.
            if let d = Double(number), d >= 0, d.isFinite {
                let value = d * Double(nanos)
                return value < 9.2e18 ? Int64(value) : nil
            }
        }
        if let n = Int64(t), n >= 0 { return seconds(n) }
        return nil
    }

    /// `n` seconds in nanoseconds, or nil when negative or too large.
    public static func seconds(_ n: Int64) -> Int64? {
        n >= 0 ? checked(n, 1_000_000_000) : nil
    }

    private static func checked(_ n: Int64, _ unit: Int64) -> Int64? {
        let (value, overflow) = n.multipliedReportingOverflow(by: unit)
        return overflow ? nil : value
    }

    /// Exactly, in the largest unit that divides it, as the configuration writes it:
    /// "330s", "5m", "1h", "250ms".
    public static func format(nanoseconds ns: Int64) -> String {
        if ns % 3_600_000_000_000 == 0 && ns > 0 { return "\(ns / 3_600_000_000_000)h" }
        if ns % 60_000_000_000 == 0 && ns > 0 { return "\(ns / 60_000_000_000)m" }
        if ns % 1_000_000_000 == 0 { return "\(ns / 1_000_000_000)s" }
        return "\(ns / 1_000_000)ms"
    }

    /// A span for people, rounded: "1h2m3s", "4.5s", "250ms", "12µs".
    public static func approximate(nanoseconds ns: Int64) -> String {
        if ns < 1_000_000 { return "\(max(0, ns) / 1000)µs" }
        if ns < 10_000_000_000 {
            let ms = ns / 1_000_000
            return ms < 1000 ? "\(ms)ms" : "\(ms / 1000).\((ms % 1000) / 100)s"
        }
        var seconds = ns / 1_000_000_000 + (ns % 1_000_000_000 == 0 ? 0 : 1)
        var out = ""
        let days = seconds / 86_400
        if days > 0 { out += "\(days)d"; seconds %= 86_400 }
        let hours = seconds / 3600
        if hours > 0 { out += "\(hours)h"; seconds %= 3600 }
        let minutes = seconds / 60
        if minutes > 0 { out += "\(minutes)m"; seconds %= 60 }
        if seconds > 0 || out.isEmpty { out += "\(seconds)s" }
        return out
    }
}

#if canImport(NIOCore)
extension DurationText {
    public static func parse(_ text: String) -> TimeAmount? {
        nanoseconds(text).map(TimeAmount.nanoseconds)
    }

    public static func format(_ amount: TimeAmount) -> String {
        format(nanoseconds: amount.nanoseconds)
    }
}
#endif
