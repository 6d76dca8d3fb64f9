// Where rate-limit state lives. The in-memory store (the default) answers at once; a shared
// store such as PostgreSQL answers later with a future. Backends that need a heavy
// dependency register themselves in `CounterStoreRegistry` at startup, so the core never
// links them. This file defines the contract; it stores nothing itself.

import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Identifies one rule's counters inside a store.
public struct RateRuleIdentity: Sendable, Hashable {
    /// The rule's name (shared stores key rows by it, so it is stable across hosts).
    public let name: String
    /// Changes whenever what the rule counts changes (not its numbers); in-memory counters of
    /// a rule that counts something else start afresh.
    public let fingerprint: UInt64

    public init(name: String, fingerprint: UInt64) {
        self.name = name
        self.fingerprint = fingerprint
    }
}

/// One hit, ready for a store.
public struct RateHit: Sendable {
    public let rule: RateRuleIdentity
    public let parameters: GCRAParameters
    /// The key bytes as built by `RateKeySpec.build`.
    public let key: [UInt8]
    public let cost: Int64
    /// How the key reads (a shared store keeps the text beside the bytes, for administrators).
    public let spec: RateKeySpec?

    public init(rule: RateRuleIdentity, parameters: GCRAParameters, key: [UInt8], cost: Int64, spec: RateKeySpec? = nil) {
        self.rule = rule
        self.parameters = parameters
        self.key = key
        self.cost = cost
        self.spec = spec
    }
}

/// Why a store could not answer; the rule's fail action applies.
public struct CounterStoreFailure: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The stored state of one key, for `status`.
public struct RateKeyState: Sendable, Equatable {
    /// The key's TAT, or nil when the store holds nothing for it (a full bucket).
    public let tat: Int64?
    /// The store's clock at the time of the answer, in the same unit and time line as `tat`.
    public let now: Int64
    public init(tat: Int64?, now: Int64) {
        self.tat = tat
        self.now = now
    }
}

/// Keys of one rule that hold state, the least available first (`backstop ratelimit list`).
public struct RateKeyList: Sendable {
    public struct Entry: Sendable {
        public let key: [UInt8]
        public let tat: Int64
        public init(key: [UInt8], tat: Int64) {
            self.key = key
            self.tat = tat
        }
    }
    public let entries: [Entry]
    /// The store's clock at the time of the answer.
    public let now: Int64
    /// False when the store knows only some keys by name (the memory store names busy ones).
    public let complete: Bool
    public init(entries: [Entry], now: Int64, complete: Bool) {
        self.entries = entries
        self.now = now
        self.complete = complete
    }
}

public protocol CounterStore: AnyObject, Sendable {
    /// "memory", "postgres": for logs and `status`.
    var kind: String { get }
    /// Applies one hit atomically: counted when it fits, nothing consumed when refused. A
    /// `.later` answer completes within the store's own timeout or fails with CounterStoreFailure.
    func hit(_ hit: RateHit, eventLoop: any EventLoop) -> Answer<GCRAOutcome>
    /// Gives back an admitted hit (a later rule refused the same request). Best effort.
    func refund(_ hit: RateHit)
    /// The current state of a key, without changing it.
    func state(rule: RateRuleIdentity, key: [UInt8]) async throws -> RateKeyState
    /// Forgets a key's state (its whole allowance is back); whether the store held any.
    func reset(rule: RateRuleIdentity, key: [UInt8]) async throws -> Bool
    /// Up to `limit` keys of `rule` that hold state, the least available first.
    func busiest(rule: RateRuleIdentity, limit: Int) async throws -> RateKeyList
    /// Keys held per rule are published to these gauges from now on (replaces earlier ones).
    func publishKeyCounts(to gauges: [RateRuleIdentity: Gauge])
}

// MARK: - Registry of store backends

/// A store backend other than memory: reads its configuration table and makes stores.
public protocol CounterStoreBackend: Sendable {
    /// Reads `[ratelimit.<name>]`; reports problems on the section. Must call `finish()` on it.
    func readSettings(_ section: ConfigSection, baseDirectory: String) -> any CounterStoreSettings
}

public protocol CounterStoreSettings: Sendable {
    /// Equal identities mean the running store is kept across a reload (with its connections).
    var identity: String { get }
    func makeStore(logger: Logger) throws -> any CounterStore
    /// Files its settings read, again at every reload (a password file): `serve` checks,
    /// once it has given up root, that server.user can still read them.
    var files: [String] { get }
}

extension CounterStoreSettings {
    public var files: [String] { [] }
}

/// Backends registered by the executable at startup (e.g. "postgres" from BackstopPostgres).
public enum CounterStoreRegistry {
    private static let backends = NIOLockedValueBox<[String: any CounterStoreBackend]>([:])

    public static func register(_ name: String, _ backend: any CounterStoreBackend) {
        backends.withLockedValue { $0[name] = backend }
    }

    public static func backend(named name: String) -> (any CounterStoreBackend)? {
        backends.withLockedValue { $0[name] }
    }

    public static var names: [String] {
        backends.withLockedValue { Array($0.keys).sorted() }
    }
}
