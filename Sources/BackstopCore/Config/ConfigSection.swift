// Typed, error-collecting access to one table of the configuration. Every getter takes a
// default; a wrong type is reported with file:line:key and the default is used, so one
// pass finds every error. Keys never asked for are reported as unknown by `finish()`.

import NIOCore

/// @unchecked Sendable: like ConfigDiagnostics, used on the one thread that reads the file.
public final class ConfigSection: @unchecked Sendable {
    public let path: [String]
    public let diagnostics: ConfigDiagnostics
    private let values: [String: ConfigValue]
    private let order: [String]
    private var used: Set<String> = []

    public init(path: [String], values: [String: ConfigValue], order: [String], diagnostics: ConfigDiagnostics) {
        self.path = path
        self.values = values
        self.order = order
        self.diagnostics = diagnostics
    }

    public convenience init(root: ConfigValue, diagnostics: ConfigDiagnostics) {
        if case .table(let values, let order) = root {
            self.init(path: [], values: values, order: order, diagnostics: diagnostics)
        } else {
            self.init(path: [], values: [:], order: [], diagnostics: diagnostics)
        }
    }

    public var keys: [String] { order }
    public func has(_ key: String) -> Bool { values[key] != nil }

    public func report(_ key: String, _ message: String) {
        diagnostics.report(path + [key], message)
    }

    /// A warning about `key` (dotted for nested keys; empty for the section itself).
    public func warn(_ key: String, _ message: String) {
        diagnostics.warn(path + key.split(separator: ".").map(String.init), message)
    }

    /// The raw value, marking the key as known.
    public func raw(_ key: String) -> ConfigValue? {
        used.insert(key)
        return values[key]
    }

    private func typed<T>(_ key: String, _ expected: String, _ fallback: T, _ convert: (ConfigValue) -> T?) -> T {
        guard let value = raw(key) else { return fallback }
        if let converted = convert(value) { return converted }
        report(key, "expected \(expected), found \(value.typeName)")
        return fallback
    }

    public func string(_ key: String, default fallback: String) -> String {
        typed(key, "a string", fallback) { if case .string(let s) = $0 { s } else { nil } }
    }

    public func optionalString(_ key: String) -> String? {
        guard has(key) else { _ = raw(key); return nil }
        return string(key, default: "")
    }

    public func bool(_ key: String, default fallback: Bool) -> Bool {
        typed(key, "true or false", fallback) { if case .bool(let b) = $0 { b } else { nil } }
    }

    public func int(_ key: String, default fallback: Int, range: ClosedRange<Int>? = nil) -> Int {
        let value = typed(key, "an integer", fallback) { if case .int(let i) = $0 { i } else { nil } }
        if let range, !range.contains(value) {
            report(key, "\(value) is out of range: use a value from \(range.lowerBound) to \(range.upperBound)")
            return fallback
        }
        return value
    }

    public func stringArray(_ key: String, default fallback: [String]) -> [String] {
        typed(key, "an array of strings", fallback) { value in
            guard case .array(let items) = value else { return nil }
            var out: [String] = []
            for item in items {
                guard case .string(let s) = item else { return nil }
                out.append(s)
            }
            return out
        }
    }

    /// A duration written as "250ms", "10s", "5m", "1h" or "1d"; a bare integer means seconds.
    public func duration(_ key: String, default fallback: TimeAmount, range: ClosedRange<TimeAmount>? = nil) -> TimeAmount {
        guard let value = raw(key) else { return fallback }
        let parsed: TimeAmount?
        switch value {
        case .int(let seconds): parsed = seconds >= 0 ? .seconds(Int64(seconds)) : nil
        case .string(let text): parsed = DurationText.parse(text)
        default: parsed = nil
        }
        guard let parsed else {
            report(key, "expected a duration such as \"500ms\", \"30s\", \"5m\" or \"1h\"")
            return fallback
        }
        if let range, !range.contains(parsed) {
            report(key, "\(DurationText.format(parsed)) is out of range: use \(DurationText.format(range.lowerBound)) to \(DurationText.format(range.upperBound))")
            return fallback
        }
        return parsed
    }

    /// An action as Postfix spells it: "DUNNO", "DEFER_IF_PERMIT …", "550 5.1.1 …".
    public func action(_ key: String, default fallback: PolicyAction) -> PolicyAction {
        guard let value = raw(key) else { return fallback }
        guard case .string(let text) = value else {
            report(key, "expected an action string such as \"DUNNO\" or \"450 4.7.1 Try later\"")
            return fallback
        }
        do { return try PolicyAction(parsing: text) } catch {
            report(key, "\(error)")
            return fallback
        }
    }

    /// A sub-table; a missing one is empty, a wrong type is reported.
    public func section(_ key: String) -> ConfigSection {
        let value = raw(key)
        if case .table(let values, let order) = value {
            return ConfigSection(path: path + [key], values: values, order: order, diagnostics: diagnostics)
        }
        if value != nil { report(key, "expected a table ([\((path + [key]).joined(separator: "."))])") }
        return ConfigSection(path: path + [key], values: [:], order: [], diagnostics: diagnostics)
    }

    /// An array of tables ([[key]]).
    public func sections(_ key: String) -> [ConfigSection] {
        guard let value = raw(key) else { return [] }
        guard case .array(let items) = value else {
            report(key, "expected an array of tables ([[\((path + [key]).joined(separator: "."))]])")
            return []
        }
        return items.enumerated().compactMap { index, item in
            guard case .table(let values, let order) = item else {
                report(key, "item \(index + 1) is not a table")
                return nil
            }
            return ConfigSection(path: path + [key, String(index)], values: values, order: order, diagnostics: diagnostics)
        }
    }

    /// Reports about this table (one of an array) name it `key[name=NAME]` instead of by its
    /// position, e.g. ratelimit.rule[name=outbound].limit.
    public func name(_ display: String) {
        guard let key = path.dropLast().last, !display.isEmpty else { return }
        diagnostics.name(path, (path.dropLast(2) + ["\(key)[name=\(display)]"]).joined(separator: "."))
    }

    /// Reports every key of this table that no getter asked for. Call after reading it.
    public func finish() {
        for key in order where !used.contains(key) {
            diagnostics.report(path + [key], "unknown key (check the spelling; see docs/configuration.md)")
        }
    }
}

/// Durations as administrators write them ("250ms", "5s", "2m", "1h", "1d").
public enum DurationText {
    public static func parse(_ text: String) -> TimeAmount? {
        let t = text.trimmingSpaces.lowercased()
        let units: [(String, Int64)] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000),
                                         ("h", 3_600_000_000_000), ("d", 86_400_000_000_000)]
        for (suffix, nanos) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count)
            if let n = Int64(number), n >= 0 { return .nanoseconds(n * nanos) }
            if let d = Double(number), d >= 0, d.isFinite { return .nanoseconds(Int64(d * Double(nanos))) }
        }
        if let n = Int64(t), n >= 0 { return .seconds(n) }
        return nil
    }

    /// Exactly, in the largest unit that divides it, as the configuration writes it:
    /// "330s", "5m", "1h", "250ms".
    public static func format(_ amount: TimeAmount) -> String {
        let ns = amount.nanoseconds
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
        var seconds = (ns + 999_999_999) / 1_000_000_000
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
