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
    /// Settings of every check named in a stage, by check name.
    public var checks: [String: any CheckSettings] = [:]

    /// The directory relative paths in the file are resolved against.
    public var baseDirectory: String { (file as NSString).deletingLastPathComponent }

    public init(file: String = "(defaults)") { self.file = file }

    public static func load(path: String) throws(ConfigError) -> Configuration {
        let text: String
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let decoded = String(data: data, encoding: .utf8) else {
                throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "file is not valid UTF-8")])
            }
            text = decoded
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "",
                                                   message: "cannot read: \(error.localizedDescription)")])
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> Configuration {
        let root = try ConfigValue.parse(text, file: file)
        let diagnostics = ConfigDiagnostics(file: file, text: text)
        let config = read(ConfigSection(root: root, diagnostics: diagnostics), file: file)
        if !diagnostics.issues.isEmpty { throw ConfigError(issues: diagnostics.issues) }
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
        config.server.maxConnections = server.int("max_connections", default: 1000, range: 1...1_000_000)
        config.server.idleTimeout = server.duration("idle_timeout", default: .seconds(330), range: .seconds(1)...(.hours(24)))
        config.server.readTimeout = server.duration("read_timeout", default: .seconds(30), range: .milliseconds(100)...(.hours(1)))
        config.server.shutdownGrace = server.duration("shutdown_grace", default: .seconds(10), range: .zero...(.minutes(10)))
        config.server.threads = server.int("threads", default: 0, range: 0...256)
        config.server.user = server.optionalString("user")
        config.server.group = server.optionalString("group")
        server.finish()

        let proto = root.section("protocol")
        config.limits = ProtocolLimits(
            maxLineLength: proto.int("max_line_length", default: 4096, range: 256...1_048_576),
            maxAttributes: proto.int("max_attributes", default: 100, range: 16...10_000),
            maxRequestBytes: proto.int("max_request_bytes", default: 32768, range: 1024...16_777_216))
        if config.limits.maxRequestBytes < config.limits.maxLineLength {
            proto.report("max_request_bytes", "must be at least max_line_length (\(config.limits.maxLineLength))")
        }
        proto.finish()

        let log = root.section("log")
        config.log.level = log.string("level", default: "info").lowercased()
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(config.log.level) {
            log.report("level", "unknown level \"\(LogEscaping.escape(config.log.level))\": use trace, debug, info, notice, warning, error or critical")
            config.log.level = "info"
        }
        let destination = log.string("destination", default: "stderr")
        if let d = LogSettings.Destination(rawValue: destination) { config.log.destination = d } else {
            log.report("destination", "unknown destination \"\(LogEscaping.escape(destination))\": use stderr, stdout or syslog")
        }
        config.log.summaryInterval = log.duration("summary_interval", default: .zero, range: .zero...(.hours(24)))
        log.finish()

        let metrics = root.section("metrics")
        config.metrics.listen = metrics.optionalString("listen")
        if let listen = config.metrics.listen, case .tcp = ListenerSettings.parseEndpoint(listen) {} else if config.metrics.listen != nil {
            metrics.report("listen", "expected host:port such as \"127.0.0.1:9233\"")
        }
        metrics.finish()

        let policy = root.section("policy")
        config.policy.testMode = policy.bool("test_mode", default: false)
        config.policy.deadline = policy.duration("deadline", default: .seconds(5), range: .milliseconds(10)...(.seconds(90)))
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
        let modeText = section.string("mode", default: "0660")
        if let mode = Int(modeText, radix: 8), (0...0o777).contains(mode) { listener.mode = mode } else {
            section.report("mode", "expected an octal file mode such as \"0660\"")
        }
        listener.owner = section.optionalString("owner")
        listener.group = section.optionalString("group")
        listener.allow = section.networks("allow", default: [])
        if case .unix = endpoint, !listener.allow.isEmpty {
            section.report("allow", "only applies to TCP listeners; control a Unix socket with mode, owner and group")
        }
        section.finish()
        return listener
    }
}
