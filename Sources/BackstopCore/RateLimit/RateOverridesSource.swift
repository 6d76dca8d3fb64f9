// A rule's overrides file as a watched table: how it is read, named in logs and counted.
// Parsing is RateOverrides'; watching is WatchedTable's.

import Logging
import Metrics

/// One rule's overrides file, as a watched table.
public struct RateOverridesSource: WatchedTableSource, Equatable {
    public let file: String
    public let rule: String
    public let spec: RateKeySpec

    public var files: [String] { [file] }
    public var noun: String { "rate-limit overrides of rule \(rule)" }
    public var recoveryMessage: String { "rate-limit overrides of rule \(rule) loaded again after a broken edit" }

    public func load() throws(ConfigError) -> RateOverrides {
        let bytes: [UInt8]
        do { bytes = try RegularFile.read(file, maxBytes: RateOverrides.maxFileBytes) } catch {
            throw ConfigError(issues: [ConfigIssue(file: file, line: nil, key: "", message: "cannot read the overrides of rule \(rule): " + error.reason)])
        }
        let (table, issues) = RateOverrides.parse(bytes, file: file, spec: spec)
        if !issues.isEmpty { throw ConfigError(issues: issues) }
        return table
    }

    public func summary(_ table: RateOverrides) -> Logger.Metadata {
        ["rule": "\(rule)", "entries": "\(table.count)"]
    }

    public func recordGauges(_ table: RateOverrides) {
        Gauge(label: "backstop_ratelimit_overrides", dimensions: [("rule", rule)]).record(table.count)
    }

    public func failureCounter() -> Counter {
        Counter(label: "backstop_ratelimit_overrides_reload_failures_total", dimensions: [("rule", rule)])
    }
}
