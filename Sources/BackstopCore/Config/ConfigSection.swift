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

    /// Reports `key` when the user it names (with `group`, the group) is unknown to this
    /// system, which the server would otherwise find out only when it switches to it or
    /// hands a socket to it, after check-config said the file was good.
    public func reportUnknownAccount(_ key: String, _ name: String?, group: Bool = false) {
        guard let name, !(group ? SystemAccounts.groupExists(name) : SystemAccounts.userExists(name)) else { return }
        report(key, "no such \(group ? "group" : "user") \"\(LogEscaping.escape(name))\" on this system")
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
        case .int(let seconds): parsed = DurationText.seconds(Int64(seconds)).map(TimeAmount.nanoseconds)
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

extension ConfigSection {
    /// An array of CIDR strings; a bad entry is reported and skipped.
    public func networks(_ key: String, default fallback: [CIDR]) -> NetworkList {
        guard has(key) else { _ = raw(key); return NetworkList(fallback) }
        let texts = stringArray(key, default: [])
        var out: [CIDR] = []
        for text in texts {
            if let cidr = CIDR(text) { out.append(cidr) } else {
                report(key, "\"\(LogEscaping.escape(text))\" is not an IPv4 or IPv6 address or network (e.g. 192.0.2.0/24, 2001:db8::/32)")
            }
        }
        return NetworkList(out)
    }
}
