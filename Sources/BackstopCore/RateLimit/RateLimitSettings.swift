// The `[ratelimit]` section: the store (memory, or a registered shared backend such as
// postgres), the key cap, test mode, the default fail action and the rules. Builds the
// running RateLimitCheck, keeping the previous check's store (and so its counters) when
// the store settings are unchanged.

import Logging
import NIOCore

public struct RateLimitSettings: CheckSettings {
    public enum Store: Sendable {
        case memory
        case backend(name: String, settings: any CounterStoreSettings)
    }

    public var testMode = false
    public var failAction: PolicyAction = .dunno
    public var maxKeys = 1_000_000
    public var store: Store = .memory
    public var rules: [RateLimitRule] = []
    /// The memory store's counters are saved here and loaded at start; "" for none.
    public var stateFile = ""
    /// How often the memory store saves (it also saves on stop and before a reload replaces it).
    public var stateSaveInterval: TimeAmount = .seconds(60)
    /// How often rules' overrides files are checked for edits; zero: only at SIGHUP.
    public var overridesReloadInterval: TimeAmount = RecipientsSettings.defaultReloadInterval

    public init() {}

    public init(reading section: ConfigSection, baseDirectory: String) {
        testMode = section.bool("test_mode", default: testMode)
        failAction = section.action("fail_action", default: failAction)
        maxKeys = section.int("max_keys", default: maxKeys, range: 1_000...100_000_000)
        let file = section.string("state_file", default: stateFile)
        stateFile = file.isEmpty || file.hasPrefix("/") || baseDirectory.isEmpty ? file : baseDirectory + "/" + file
        stateSaveInterval = section.duration("state_save_interval", default: stateSaveInterval, range: .seconds(1)...(.hours(24)))
        let interval = section.duration("overrides_reload_interval", default: overridesReloadInterval)
        if interval.nanoseconds != 0 && (interval < .milliseconds(10) || interval > .hours(24)) {
            section.report("overrides_reload_interval", "use \"0s\" (no polling) or a duration from 10ms to 24h")
        } else {
            overridesReloadInterval = interval
        }
        let storeName = section.string("store", default: "memory")
        if storeName == "memory" {
            // A backend table may stay in the file while the memory store is used.
            for name in section.keys where name != "rule" {
                if let backend = CounterStoreRegistry.backend(named: name) {
                    _ = backend.readSettings(section.section(name), baseDirectory: baseDirectory)
                } else if name == "postgres" {
                    _ = section.raw(name)
                }
            }
        } else if let backend = CounterStoreRegistry.backend(named: storeName) {
            store = .backend(name: storeName, settings: backend.readSettings(section.section(storeName), baseDirectory: baseDirectory))
        } else {
            let available = (["memory"] + CounterStoreRegistry.names).map { "\"\($0)\"" }.joined(separator: ", ")
            section.report("store", "\"\(LogEscaping.escape(storeName))\" is not available in this build: use \(available)")
            if section.has(storeName) { _ = section.raw(storeName) }
        }
        var names = Set<String>()
        for ruleSection in section.sections("rule") {
            guard var rule = RateLimitRule.read(ruleSection, defaultFailAction: failAction) else { continue }
            if let file = rule.overrides, !file.hasPrefix("/"), !baseDirectory.isEmpty { rule.overrides = baseDirectory + "/" + file }
            if !names.insert(rule.name).inserted {
                ruleSection.report("name", "another rule is already called \"\(rule.name)\": names must be unique")
                continue
            }
            rules.append(rule)
        }
    }

    /// Stores are reused across a reload while this stays the same.
    public var storeIdentity: String {
        switch store {
        case .memory: "memory max_keys=\(maxKeys) state_file=\(stateFile) every \(stateSaveInterval.nanoseconds)"
        case .backend(let name, let settings): "\(name) \(settings.identity)"
        }
    }

    /// A rule counts at its stage only: one for a stage where ratelimit is not listed never counts.
    public func unreachable(in configuration: Configuration) -> [(key: String, message: String)] {
        rules.enumerated().flatMap { index, rule -> [(key: String, message: String)] in
            var found: [(key: String, message: String)] = []
            if !configuration.policy.runs("ratelimit", at: rule.state) {
                found.append(("rule.\(index)", "rule \"\(rule.name)\" counts at \(rule.state.configKey), but policy.\(rule.state.configKey) does not list ratelimit: it never counts"))
            }
            // After RCPT, Postfix names the recipient only when a message has exactly one: a
            // message to two recipients would pass such a rule uncounted.
            if rule.state != .rcpt, let part = rule.key.parts.first(where: { $0 == .recipient || $0 == .recipientDomain }) {
                found.append(("rule.\(index)", "rule \"\(rule.name)\" keys on \(part.rawValue) at \(rule.state.configKey), where Postfix gives the recipient only for a message with exactly one: messages to several recipients are never counted; count it at RCPT (protocol_state = \"RCPT\")"))
            }
            return found
        }
    }

    public func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        let previous = context.previous as? RateLimitCheck
        let store: any CounterStore
        let instances: RecentInstances
        if let previous, previous.storeIdentity == storeIdentity {
            store = previous.store
            instances = previous.instances
        } else {
            // A memory store being replaced saves first, so the new one starts from now.
            (previous?.store as? MemoryCounterStore)?.saveState()
            switch self.store {
            case .memory:
                store = MemoryCounterStore(maxKeys: maxKeys, stateFile: stateFile.isEmpty ? nil : stateFile,
                                           saveInterval: stateSaveInterval, logger: context.logger)
            case .backend(_, let settings):
                // check-config: no pool, no connection, no schema created in a database a
                // configuration under review names.
                store = context.validating ? MemoryCounterStore(maxKeys: 1, sweepInterval: nil) : try settings.makeStore(logger: context.logger)
            }
            instances = RecentInstances()
        }
        // Overrides: a table the running check already watches for the same rule, file and
        // key is kept (SIGHUP re-reads it through reload()); a new one must load now.
        var overrides: [String: WatchedTable<RateOverridesSource>] = [:]
        let running = previous?.overridesTables ?? [:]
        for rule in rules {
            guard let file = rule.overrides else { continue }
            let source = RateOverridesSource(file: file, rule: rule.name, spec: rule.key)
            if let watched = running[rule.name], watched.source == source, watched.interval == overridesReloadInterval {
                overrides[rule.name] = watched
                continue
            }
            let watched = WatchedTable(source: source, interval: overridesReloadInterval, logger: context.logger)
            try watched.loadInitial()
            watched.startWatching()
            overrides[rule.name] = watched
        }
        return RateLimitCheck(settings: self, store: store, instances: instances, overrides: overrides, logger: context.logger)
    }
}
