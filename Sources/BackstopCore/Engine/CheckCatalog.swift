// The list of checks Backstop knows, each with the reader of its configuration section.
// Adding a check means adding its type, its settings, and one line here; a check that
// lives in a target of its own (spf, in BackstopSPF) registers itself at start-up.

import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Settings of one check, read from its section; builds the running check.
public protocol CheckSettings: Sendable {
    func makeCheck(_ context: CheckBuildContext) throws -> any Check
    /// Problems with the rest of the configuration, as (key of this section, message).
    func conflicts(with configuration: Configuration) -> [(key: String, message: String)]
    /// Settings of a check that runs somewhere but that can never take effect, e.g. a rule
    /// for a stage where the check is not listed, as (dotted key, message): warnings.
    func unreachable(in configuration: Configuration) -> [(key: String, message: String)]
    /// True when the check does work for something other than a policy stage (batv signs
    /// for the socketmap listener), so a section listed in no stage is not idle.
    func usedOutsideStages(in configuration: Configuration) -> Bool
}

extension CheckSettings {
    public func conflicts(with configuration: Configuration) -> [(key: String, message: String)] { [] }
    public func unreachable(in configuration: Configuration) -> [(key: String, message: String)] { [] }
    public func usedOutsideStages(in configuration: Configuration) -> Bool { false }
}

public struct CheckBuildContext: Sendable {
    public var logger: Logger
    /// The instance of the same check in the configuration being replaced, if any:
    /// checks keep state (counters, caches, loaded tables) across reloads through it.
    public var previous: (any Check)?
    public var deadline: TimeAmount
    /// `[recipients] recipient_delimiter`: the address lists of other checks (bounces'
    /// no_reply_addresses, batv's exempt and exclude_senders) match an address with an
    /// extension by its base address too, as Postfix delivers it there.
    public var recipientDelimiters: [UInt8]
    /// `log.level` of the configuration being built, for a check that decides once what it
    /// logs (nil: the logger's own). A reload puts the new log settings in force only once
    /// its engine is built, so a configuration that fails to build never logs with them.
    public var logLevel: Logger.Level?
    /// Built only to be checked (`backstop check-config`): a check opens no connection and
    /// changes nothing outside the process (the shared rate-limit store is not set up).
    public var validating = false

    public init(logger: Logger, previous: (any Check)? = nil, deadline: TimeAmount = PolicySettings.defaultDeadline,
                recipientDelimiters: [UInt8] = [], logLevel: Logger.Level? = nil) {
        self.logger = logger
        self.previous = previous
        self.deadline = deadline
        self.recipientDelimiters = recipientDelimiters
        self.logLevel = logLevel
    }
}

public struct CheckKind: Sendable {
    public let name: String
    /// Reads the check's section; relative paths are resolved against the base directory.
    public let read: @Sendable (ConfigSection, _ baseDirectory: String) -> any CheckSettings

    public init(name: String, read: @escaping @Sendable (ConfigSection, String) -> any CheckSettings) {
        self.name = name
        self.read = read
    }
}

public enum CheckCatalog {
    private static let builtIn: [CheckKind] = [
        CheckKind(name: "recipients") { section, baseDir in RecipientsSettings(reading: section, baseDirectory: baseDir) },
        CheckKind(name: "ratelimit") { section, baseDir in RateLimitSettings(reading: section, baseDirectory: baseDir) },
        CheckKind(name: "bounces") { section, baseDir in BouncesSettings(reading: section, baseDirectory: baseDir) },
        CheckKind(name: "batv") { section, baseDir in BATVSettings(reading: section, baseDirectory: baseDir) },
    ]
    private static let registered = NIOLockedValueBox<[CheckKind]>([])

    /// Adds (or replaces) a check kind from another target.
    public static func register(_ kind: CheckKind) {
        registered.withLockedValue { list in
            list.removeAll { $0.name == kind.name }
            list.append(kind)
        }
    }

    /// Every known check: the built-in ones first, then the registered ones.
    public static var kinds: [CheckKind] { builtIn + registered.withLockedValue { $0 } }

    public static func kind(named name: String) -> CheckKind? {
        kinds.first { $0.name == name }
    }
}

/// A check whose data lives in files re-reads them when asked (SIGHUP).
public protocol ReloadableCheck: Check {
    /// Re-reads the files; returns the problems of an edit that could not be loaded (the
    /// last good version stays in force), empty when the newest version is in force.
    @discardableResult
    func reload() -> [ConfigIssue]
    /// The files it reads (again at every edit and reload): `serve` checks, once it has
    /// given up root, that server.user can still read them.
    var files: [String] { get }
    /// Its engine is installed: its tables now set their gauges (WatchedTable.putInForce).
    func putInForce()
}

extension ReloadableCheck {
    public func putInForce() {}
}

extension PolicyEngine {
    /// Called once the engine answers (at start, and after a reload installed it): the
    /// tables its checks read set their gauges from now on, and no table built for a
    /// configuration that never came into force does.
    public func putTablesInForce() {
        for check in checks.values { (check as? any ReloadableCheck)?.putInForce() }
    }
}
