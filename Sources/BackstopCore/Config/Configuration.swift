// The whole configuration of one Backstop process, read from one TOML file. Reading
// collects every error with file:line:key; `load` throws them all together, so a broken
// file never half-applies and the running configuration stays in force on reload.

import Foundation
import NIOCore

public struct Configuration: Sendable {
    public var file: String
    public var listeners: [ListenerSettings] = [.defaultTCP]
    public var server = ServerSettings()
    public var limits = ProtocolLimits.defaults
    public var log = LogSettings()
    public var policy = PolicySettings()
    public var metrics = MetricsSettings()
    /// Settings of every check named in a stage or given a section, by check name.
    public var checks: [String: any CheckSettings] = [:]
    /// Settings that are valid but never take effect; `check-config` prints them and
    /// `check-config --strict` fails on them, `serve` logs them.
    public var warnings: [ConfigIssue] = []

    /// `[recipients] recipient_delimiter`, which the other checks' address lists follow too
    /// (CheckBuildContext.recipientDelimiters); none without `[recipients]`.
    public var recipientDelimiters: [UInt8] {
        (checks["recipients"] as? RecipientsSettings)?.rules.recipientDelimiters ?? []
    }

    /// The directory relative paths in the file are resolved against.
    public var baseDirectory: String { (file as NSString).deletingLastPathComponent }

    public init(file: String = "(defaults)") { self.file = file }

    /// Where every command that reads the configuration looks unless told otherwise.
    public static let defaultPath = "/etc/backstop/backstop.toml"

    /// The largest configuration file read (1 MiB); a larger one is refused before parsing.
    public static let maxFileBytes = 1 << 20

    public static func load(path: String) throws(ConfigError) -> Configuration {
        let bytes: [UInt8]
        do { bytes = try RegularFile.read(path, maxBytes: maxFileBytes) } catch {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "cannot read the configuration: " + error.reason)])
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            // The first line that is not UTF-8 (a line is what lies between two newlines).
            var number = 0
            let line = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).first { line in
                number += 1
                return String(validating: line, as: UTF8.self) == nil
            }
            throw ConfigError(issues: [ConfigIssue(file: path, line: line == nil ? nil : number, key: "", message: "not valid UTF-8: save the file as UTF-8")])
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> Configuration {
        // The TOML parser reads a C string: everything after a NUL (a block of zeros a crash
        // left, a bad edit) would be dropped without a word, sections and all.
        if let nul = text.utf8.firstIndex(of: 0) {
            let line = text.utf8[..<nul].reduce(1) { $1 == 0x0A ? $0 + 1 : $0 }
            throw ConfigError(issues: [ConfigIssue(file: file, line: line, key: "", message: "a NUL byte: a configuration is text")])
        }
        let root = try ConfigValue.parse(text, file: file)
        let diagnostics = ConfigDiagnostics(file: file, text: text)
        var config = read(ConfigSection(root: root, diagnostics: diagnostics), file: file)
        if !diagnostics.issues.isEmpty { throw ConfigError(issues: diagnostics.issues) }
        config.warnings = diagnostics.warnings
        return config
    }

    static func read(_ root: ConfigSection, file: String) -> Configuration {
        var config = Configuration(file: file)

        let listens = root.sections("listen")
        if root.has("listen") {
            config.listeners = listens.compactMap(readListener)
            if config.listeners.isEmpty && !listens.isEmpty == false {
                root.report("listen", "at least one [[listen]] is needed")
            }
        }

        let server = root.section("server")
        config.server.maxConnections = server.int("max_connections", default: config.server.maxConnections, range: 1...1_000_000)
        config.server.idleTimeout = server.duration("idle_timeout", default: config.server.idleTimeout, range: .seconds(1)...(.hours(24)))
        config.server.readTimeout = server.duration("read_timeout", default: config.server.readTimeout, range: .milliseconds(100)...(.hours(1)))
        config.server.shutdownGrace = server.duration("shutdown_grace", default: config.server.shutdownGrace, range: .zero...(.minutes(10)))
        config.server.threads = server.int("threads", default: config.server.threads, range: 0...256)
        config.server.user = server.optionalString("user")
        config.server.group = server.optionalString("group")
        // Named at start only when started as root; a name the system does not know would
        // stop the server there (exit 77).
        server.reportUnknownAccount("user", config.server.user)
        server.reportUnknownAccount("group", config.server.group, group: true)
        server.finish()

        let proto = root.section("protocol")
        config.limits = ProtocolLimits(
            maxLineLength: proto.int("max_line_length", default: ProtocolLimits.defaults.maxLineLength, range: 256...1_048_576),
            maxAttributes: proto.int("max_attributes", default: ProtocolLimits.defaults.maxAttributes, range: 16...10_000),
            maxRequestBytes: proto.int("max_request_bytes", default: ProtocolLimits.defaults.maxRequestBytes, range: 1024...16_777_216))
        if config.limits.maxRequestBytes < config.limits.maxLineLength {
            proto.report("max_request_bytes", "must be at least max_line_length (\(config.limits.maxLineLength))")
        }
        proto.finish()

        let log = root.section("log")
        config.log.level = log.string("level", default: config.log.level).lowercased()
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(config.log.level) {
            log.report("level", "unknown level \"\(LogEscaping.escape(config.log.level))\": use trace, debug, info, notice, warning, error or critical")
            config.log.level = "info"
        }
        let destination = log.string("destination", default: config.log.destination.rawValue)
        if let d = LogSettings.Destination(rawValue: destination) { config.log.destination = d } else {
            log.report("destination", "unknown destination \"\(LogEscaping.escape(destination))\": use stderr, stdout or syslog")
        }
        let decisions = log.string("decisions", default: config.log.decisions.rawValue)
        if let d = LogSettings.Decisions(rawValue: decisions) { config.log.decisions = d } else {
            log.report("decisions", "\"\(LogEscaping.escape(decisions))\" is not one of all, refusals, none")
        }
        config.log.summaryInterval = log.duration("summary_interval", default: config.log.summaryInterval, range: .zero...(.hours(24)))
        log.finish()

        let metrics = root.section("metrics")
        config.metrics.listen = metrics.optionalString("listen")
        let explicitAllow = metrics.has("allow")
        config.metrics.allow = metrics.networks("allow", default: config.metrics.allow.networks)
        config.metrics.maxConnections = metrics.int("max_connections", default: config.metrics.maxConnections, range: 1...1024)
        config.metrics.readTimeout = metrics.duration("read_timeout", default: config.metrics.readTimeout, range: .milliseconds(100)...(.minutes(5)))
        config.metrics.idleTimeout = metrics.duration("idle_timeout", default: config.metrics.idleTimeout, range: .seconds(1)...(.hours(1)))
        if let listen = config.metrics.listen {
            if case .tcp(let host, _) = ListenerSettings.parseEndpoint(listen) {
                if !MetricsSettings.isLoopback(host: host) && !explicitAllow {
                    metrics.report("listen", "\(LogEscaping.escape(listen)) is not a loopback address: list the scrapers' networks in metrics.allow")
                }
            } else {
                metrics.report("listen", "expected host:port such as \"127.0.0.1:9233\"")
            }
        }
        if config.metrics.allow.isEmpty { metrics.report("allow", "must list at least one network") }
        metrics.finish()

        let policy = root.section("policy")
        config.policy.testMode = policy.bool("test_mode", default: config.policy.testMode)
        config.policy.deadline = policy.duration("deadline", default: config.policy.deadline, range: .milliseconds(10)...(.seconds(90)))
        var named = Set<String>()
        for state in ProtocolState.allCases where state != .other {
            let names = policy.stringArray(state.configKey, default: [])
            for name in names where CheckCatalog.kind(named: name) == nil {
                policy.report(state.configKey, "unknown check \"\(LogEscaping.escape(name))\": known checks are \(CheckCatalog.kinds.map(\.name).joined(separator: ", "))")
            }
            let valid = names.filter { CheckCatalog.kind(named: $0) != nil }
            if Set(valid).count != valid.count { policy.report(state.configKey, "a check is listed twice") }
            if !valid.isEmpty { config.policy.stages[state] = valid }
            named.formUnion(valid)
        }
        policy.finish()

        // Every check section is read (so typos in an unused section are still caught);
        // only the checks named in a stage run.
        for kind in CheckCatalog.kinds where root.has(kind.name) || named.contains(kind.name) {
            let section = root.section(kind.name)
            config.checks[kind.name] = kind.read(section, config.baseDirectory)
            section.finish()
        }
        for (name, settings) in config.checks.sorted(by: { $0.key < $1.key }) {
            for (key, message) in settings.conflicts(with: config) { root.section(name).report(key, message) }
            if config.policy.stage(listing: name) == nil {
                if !settings.usedOutsideStages(in: config) {
                    root.section(name).warn("", "[\(name)] is configured but listed in no [policy] stage, so it never runs")
                }
            } else {
                for (key, message) in settings.unreachable(in: config) { root.section(name).warn(key, message) }
            }
        }
        root.finish()
        return config
    }

    private static func readListener(_ section: ConfigSection) -> ListenerSettings? {
        let address = section.string("address", default: "")
        var listener = ListenerSettings.defaultTCP
        guard let endpoint = ListenerSettings.parseEndpoint(address) else {
            section.report("address", address.isEmpty
                ? "missing: use \"127.0.0.1:10033\", \"[::1]:10033\" or \"unix:/path/to/socket\""
                : "\"\(LogEscaping.escape(address))\" is not host:port, [ipv6]:port or unix:/absolute/path")
            section.finish()
            return nil
        }
        listener.endpoint = endpoint
        let modeText = section.string("mode", default: "0" + String(listener.mode, radix: 8))
        if let mode = Int(modeText, radix: 8), (0...0o777).contains(mode) { listener.mode = mode } else {
            section.report("mode", "expected an octal file mode such as \"0660\"")
        }
        listener.owner = section.optionalString("owner")
        listener.group = section.optionalString("group")
        section.reportUnknownAccount("owner", listener.owner)
        section.reportUnknownAccount("group", listener.group, group: true)
        listener.allow = section.networks("allow", default: [])
        let served = section.string("protocol", default: listener.protocol.rawValue)
        if let p = ListenerSettings.ServedProtocol(rawValue: served) { listener.protocol = p } else {
            section.report("protocol", "\"\(LogEscaping.escape(served))\" is not policy or socketmap")
        }
        if case .unix = endpoint, !listener.allow.isEmpty {
            section.report("allow", "only applies to TCP listeners; control a Unix socket with mode, owner and group")
        }
        if case .unix = endpoint {} else {
            // A socket file's settings on a TCP listener would protect nothing: refused, as
            // `allow` is on a Unix socket, so nobody believes a TCP port is restricted.
            for key in ["mode", "owner", "group"] where section.has(key) {
                section.report(key, "only applies to Unix sockets; restrict a TCP listener with allow")
            }
        }
        section.finish()
        return listener
    }
}
