// Rate-limit counters kept in PostgreSQL, so several Backstop hosts (MX machines) share one
// limit. Each hit is one atomic INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING statement
// that runs GCRA inside the database with the database's clock, so there is no read-modify-
// write race between connections or hosts and host clocks need not agree. Connections come
// from a postgres-nio pool. Every hit is answered within statement_timeout: when the database
// is slow or down the hit fails and the rule's fail action applies; after three failures in a
// row later hits fail at once for retry_interval, without waiting, and then the store is
// tried again, so it recovers by itself.
// This file does not decide anything; RateLimitCheck does.

import BackstopCore
import Crypto
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

public final class PostgresCounterStore: CounterStore, Sendable {
    public var kind: String { "postgres" }
    public let settings: PostgresStoreSettings
    private let client: PostgresClient
    private let logger: Logger
    private let tasks = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let health = NIOLockedValueBox(Health())
    private let gauges = NIOLockedValueBox<[String: Gauge]>([:])
    private let failuresTotal = Counter(label: "backstop_ratelimit_postgres_failures_total")

    struct Health {
        var schemaReady = false
        /// While the clock is before this, hits fail at once (the store failed repeatedly).
        var unavailableUntil: NIODeadline = .uptimeNanoseconds(0)
        /// Failures since the last success; a single slow statement does not stop the store.
        var consecutiveFailures = 0
        var lastError = ""
        var failing = false
    }

    public static let table = "backstop_ratelimit"

    public init(settings: PostgresStoreSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        var configuration = PostgresClient.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: settings.password,
            database: settings.database, tls: settings.tls.configuration)
        configuration.options.maximumConnections = settings.poolSize
        // Keep connections open so a burst does not wait for new ones to be set up.
        configuration.options.minimumConnections = max(0, settings.poolSize - 1)
        configuration.options.connectTimeout = .nanoseconds(settings.connectTimeout.nanoseconds)
        // The server cancels a statement that runs longer than this (the client stops waiting then too).
        configuration.options.additionalStartupParameters = [
            ("statement_timeout", "\(max(1, settings.statementTimeout.nanoseconds / 1_000_000))"),
            ("application_name", "backstop"),
        ]
        // postgres-nio reports every connection attempt; those lines are debug (LogLabels).
        self.client = PostgresClient(configuration: configuration, backgroundLogger: Logger(label: LogLabels.library))
        let client = self.client
        let run = Task { await client.run() }
        let maintain = Task { [weak self] in
            while !Task.isCancelled {
                // Holds the store only while working, not while sleeping, so a replaced
                // store is released (and its pool closed) promptly.
                guard let ready = await self?.maintain() else { return }
                try? await Task.sleep(nanoseconds: ready ? UInt64(settings.sweepInterval.nanoseconds) : 1_000_000_000)
            }
        }
        tasks.withLockedValue { $0 = [run, maintain] }
    }

    deinit {
        for task in tasks.withLockedValue({ $0 }) { task.cancel() }
    }

    /// Stops the pool and background work (tests; a replaced store also stops when released).
    public func shutdown() {
        for task in tasks.withLockedValue({ $0 }) { task.cancel() }
    }

    /// Whether the schema is in place (the first migration succeeded).
    public var isReady: Bool { health.withLockedValue { $0.schemaReady } }

    // MARK: - Schema

    /// Creates the schema until that works, then sweeps. Returns whether the schema is ready.
    private func maintain() async -> Bool {
        if health.withLockedValue({ $0.schemaReady }) {
            await sweep()
        } else {
            await migrate()
        }
        return health.withLockedValue { $0.schemaReady }
    }

    /// The database's clock in nanoseconds (statement_timestamp(), so the hosts' clocks need
    /// not agree), as every statement reads it.
    static let clock = "(extract(epoch FROM statement_timestamp()) * 1000000)::bigint * 1000"

    /// The schema version this code uses (`backstop_schema`, component 'ratelimit').
    static let schemaVersion = 2

    /// Creates or upgrades the table. Several hosts may start at once: an advisory lock
    /// serialises them, and the statements are idempotent. A schema already at this
    /// version is used as it is: the DDL needs the table's owner (a role granted only
    /// SELECT, INSERT, UPDATE and DELETE could never start) and takes an exclusive lock.
    func migrate() async {
        let table = Self.table
        let unlogged = settings.unlogged ? "UNLOGGED " : ""
        if await installedVersion() >= Self.schemaVersion {
            becameReady()
            return
        }
        do {
            try await client.withTransaction(logger: logger) { connection in
                try await connection.query("SELECT pg_advisory_xact_lock(4242424242)", logger: self.logger)
                try await connection.query(PostgresQuery(unsafeSQL: """
                    CREATE \(unlogged)TABLE IF NOT EXISTS \(table) (
                        rule text NOT NULL,
                        key bytea NOT NULL,
                        tat bigint NOT NULL,
                        key_text text,
                        PRIMARY KEY (rule, key))
                    """), logger: self.logger)
                // Version 2: the key as administrators read it, and a view with readable times.
                try await connection.query(PostgresQuery(unsafeSQL:
                    "ALTER TABLE \(table) ADD COLUMN IF NOT EXISTS key_text text"), logger: self.logger)
                try await connection.query(PostgresQuery(unsafeSQL: """
                    CREATE OR REPLACE VIEW \(table)_readable AS
                    SELECT rule, key_text AS key, to_timestamp(tat / 1000000000.0) AS full_again_at, key AS key_bytes
                    FROM \(table)
                    WHERE tat > \(Self.clock)
                    """), logger: self.logger)
                try await connection.query(PostgresQuery(unsafeSQL:
                    "CREATE INDEX IF NOT EXISTS \(table)_tat ON \(table) (tat)"), logger: self.logger)
                try await connection.query(PostgresQuery(unsafeSQL: """
                    CREATE TABLE IF NOT EXISTS backstop_schema (component text PRIMARY KEY, version integer NOT NULL)
                    """), logger: self.logger)
                try await connection.query(PostgresQuery(unsafeSQL: """
                    INSERT INTO backstop_schema (component, version) VALUES ('ratelimit', \(Self.schemaVersion))
                    ON CONFLICT (component) DO UPDATE SET version = GREATEST(backstop_schema.version, \(Self.schemaVersion))
                    """), logger: self.logger)
            }
            becameReady()
        } catch {
            if Task.isCancelled { return }  // the store is shutting down
            noteFailure(error, during: "creating the schema")
        }
    }

    private func becameReady() {
        health.withLockedValue { $0.schemaReady = true }
        logger.info("rate-limit store ready", metadata: ["store": "postgres", "host": "\(settings.host)",
                                                         "port": "\(settings.port)", "database": "\(settings.database)"])
    }

    /// The schema version in place, 0 when there is none (or it cannot be read).
    private func installedVersion() async -> Int {
        do {
            let rows = try await client.query("SELECT version FROM backstop_schema WHERE component = 'ratelimit'", logger: logger)
            for try await version in rows.decode(Int32.self) { return Int(version) }
        } catch {}
        return 0
    }

    // MARK: - Hits

    /// One statement: GCRA on the row for (rule, key) using the database clock (nanoseconds).
    /// $3 is cost × T, $4 the tolerance. A refused hit updates nothing (but see `clamp`).
    static let hitSQL = """
        WITH clock AS (SELECT \(clock) AS now),
        hit AS (
            INSERT INTO \(table) AS r (rule, key, tat, key_text)
            SELECT $1, $2, clock.now + $3::bigint, $5 FROM clock
            ON CONFLICT (rule, key) DO UPDATE
                SET tat = GREATEST(r.tat, EXCLUDED.tat - $3::bigint) + $3::bigint
                WHERE GREATEST(r.tat, EXCLUDED.tat - $3::bigint) + $3::bigint - (EXCLUDED.tat - $3::bigint) <= $4::bigint
            RETURNING r.tat)
        SELECT (SELECT now FROM clock), (SELECT tat FROM hit),
               (SELECT tat FROM \(table) WHERE rule = $1 AND key = $2)
        """

    public func hit(_ hit: RateHit, eventLoop: any EventLoop) -> Answer<GCRAOutcome> {
        let p = hit.parameters
        guard hit.cost <= p.burst else { return .now(.refused(retryAfter: nil)) }
        if let reason = unavailableReason() {
            return .later(eventLoop.makeFailedFuture(CounterStoreFailure(reason)))
        }
        // The rows hold nanoseconds since 1970 (1.8e18 now), which leaves a bigint room for
        // 2^62 more: the increment and the tolerance are capped at 2^61 each (73 years), so no
        // sum the statement makes can overflow (that failed the hit, and the rule let every
        // hit after the first through). A limit of one per 137 years is one per 73 here.
        let increment = min(hit.cost * p.emissionInterval, Self.maxSpan)
        let tolerance = min(p.tolerance, Self.maxSpan)
        var binds = PostgresBindings(capacity: 5)
        binds.append(hit.rule.name)
        binds.append(Self.stored(hit.key))
        binds.append(increment)
        binds.append(tolerance)
        binds.append(hit.spec?.display(hit.key))
        let query = PostgresQuery(unsafeSQL: Self.hitSQL, binds: binds)
        return .later(within(eventLoop) { [client, logger] in
            let rows = try await client.query(query, logger: logger)
            for try await (now, newTAT, oldTAT) in rows.decode((Int64, Int64?, Int64?).self) {
                // The row is the database's: wrapping arithmetic and clamps, so a tampered
                // table gives a wrong count for its key, never a trap in the server.
                if let newTAT {
                    let remaining = (p.tolerance &- (newTAT &- now)) / p.emissionInterval
                    return .admitted(remaining: min(max(0, remaining), p.burst), newTAT: newTAT)
                }
                // Further ahead than clock skew between statements explains (each statement
                // reads its own start time, and under contention an earlier one may run after
                // a later one): a row from a larger limit.
                if let oldTAT, oldTAT &- now > tolerance &+ Self.clampMargin { self.clamp(hit, to: tolerance) }
                // The wait GCRA gives for the row as read (a state from a larger limit counts
                // as the whole burst); 1 ns when the row as read would fit (it moved on after
                // the statement's update was decided).
                guard case .refused(let retryAfter?) = GCRA.apply(tat: oldTAT, now: now, cost: hit.cost, p) else {
                    return .refused(retryAfter: 1)
                }
                return .refused(retryAfter: retryAfter)
            }
            throw CounterStoreFailure("the hit statement returned no row")
        })
    }

    /// Rows are kept by rule name, so a row may come from the rule's earlier limit (a reload,
    /// another host not yet reloaded) and lie further ahead than this limit allows (by more
    /// than `clampMargin`). It is brought back to now + tolerance (the new burst used up), so
    /// the key frees up at the new rate: lowering 1000/1d to 100/1h must not refuse a key for
    /// the rest of the day. The margin is for the clock: each statement reads its own start
    /// time, and one that waited for the row may find it set by a later one (milliseconds).
    /// It was a quarter of the tolerance: a burst lowered by less than that (500/1d with
    /// burst 100 to burst 80) was never clamped, and the key was refused for up to an hour.
    static let clampMargin: Int64 = 1_000_000_000

    /// The longest T × cost and tolerance a statement uses: 2^61 ns, 73 years.
    static let maxSpan: Int64 = 1 << 61

    func clamp(_ hit: RateHit, to tolerance: Int64) {
        updateRow(hit, "SET tat = \(Self.clock) + $3 WHERE rule = $1 AND key = $2 AND tat > \(Self.clock) + $3", tolerance, "clamp")
    }

    public func refund(_ hit: RateHit) {
        guard unavailableReason() == nil else { return }
        updateRow(hit, "SET tat = tat - $3 WHERE rule = $1 AND key = $2", min(hit.cost * hit.parameters.emissionInterval, Self.maxSpan), "refund")
    }

    /// `UPDATE table <sql>` with $1, $2 the hit's rule and key and $3 `value`, not waited
    /// for: a failure costs only this correction.
    private func updateRow(_ hit: RateHit, _ sql: String, _ value: Int64, _ what: String) {
        var binds = PostgresBindings(capacity: 3)
        binds.append(hit.rule.name)
        binds.append(Self.stored(hit.key))
        binds.append(value)
        let query = PostgresQuery(unsafeSQL: "UPDATE \(Self.table) " + sql, binds: binds)
        Task { [client, logger] in
            do { try await client.query(query, logger: logger) } catch {
                logger.debug("rate-limit \(what) failed", metadata: ["error": "\(error)"])
            }
        }
    }

    public func state(rule: RateRuleIdentity, key: [UInt8]) async throws -> RateKeyState {
        var binds = PostgresBindings(capacity: 2)
        binds.append(rule.name)
        binds.append(Self.stored(key))
        let query = PostgresQuery(unsafeSQL: """
            SELECT \(Self.clock),
                   (SELECT tat FROM \(Self.table) WHERE rule = $1 AND key = $2)
            """, binds: binds)
        let rows = try await client.query(query, logger: logger)
        for try await (now, tat) in rows.decode((Int64, Int64?).self) {
            return RateKeyState(tat: tat.flatMap { $0 > now ? $0 : nil }, now: now)
        }
        throw CounterStoreFailure("no answer")
    }

    public func reset(rule: RateRuleIdentity, key: [UInt8]) async throws -> Bool {
        var binds = PostgresBindings(capacity: 2)
        binds.append(rule.name)
        binds.append(Self.stored(key))
        let query = PostgresQuery(unsafeSQL: """
            DELETE FROM \(Self.table) WHERE rule = $1 AND key = $2
            RETURNING tat > \(Self.clock)
            """, binds: binds)
        var held = false
        for try await live in try await client.query(query, logger: logger).decode(Bool.self) { held = held || live }
        return held
    }

    public func busiest(rule: RateRuleIdentity, limit: Int) async throws -> RateKeyList {
        var binds = PostgresBindings(capacity: 2)
        binds.append(rule.name)
        binds.append(limit)
        let query = PostgresQuery(unsafeSQL: """
            WITH clock AS (SELECT \(Self.clock) AS now)
            SELECT clock.now, r.key, r.tat FROM clock
            LEFT JOIN LATERAL (SELECT key, tat FROM \(Self.table) WHERE rule = $1 AND tat > clock.now
                               ORDER BY tat DESC LIMIT $2) r ON true
            """, binds: binds)
        var now: Int64 = 0
        var entries: [RateKeyList.Entry] = []
        for try await (clock, key, tat) in try await client.query(query, logger: logger).decode((Int64, ByteBuffer?, Int64?).self) {
            now = clock
            if let key, let tat { entries.append(.init(key: Array(key.readableBytesView), tat: tat)) }
        }
        return RateKeyList(entries: entries, now: now, complete: true)
    }

    public func publishKeyCounts(to gauges: [RateRuleIdentity: Gauge]) {
        var byName: [String: Gauge] = [:]
        for (rule, gauge) in gauges { byName[rule.name] = gauge }
        self.gauges.withLockedValue { $0 = byName }
    }

    /// Rows deleted by one statement of a sweep, and statements per sweep at most: each
    /// statement stays well inside statement_timeout, so a backlog (after an outage, or a
    /// flood of distinct keys) shrinks at every sweep instead of timing out whole.
    static let sweepBatch = 5_000
    static let sweepBatchesMax = 200

    /// Deletes rows whose TAT has passed (they carry no state) and publishes key counts.
    func sweep() async {
        do {
            let delete = PostgresQuery(unsafeSQL: """
                WITH gone AS (DELETE FROM \(Self.table) WHERE ctid IN
                    (SELECT ctid FROM \(Self.table) WHERE tat <= \(Self.clock) LIMIT \(Self.sweepBatch)) RETURNING 1)
                SELECT count(*) FROM gone
                """)
            for _ in 0..<Self.sweepBatchesMax {
                var deleted: Int64 = 0
                for try await count in try await client.query(delete, logger: logger).decode(Int64.self) { deleted = count }
                if deleted < Self.sweepBatch || Task.isCancelled { break }
            }
            let rows = try await client.query(PostgresQuery(unsafeSQL:
                "SELECT rule, count(*) FROM \(Self.table) WHERE tat > \(Self.clock) GROUP BY rule"), logger: logger)
            var counts: [String: Int64] = [:]
            for try await (rule, count) in rows.decode((String, Int64).self) { counts[rule] = count }
            for (rule, gauge) in gauges.withLockedValue({ $0 }) { gauge.record(counts[rule] ?? 0) }
        } catch {
            logger.debug("rate-limit sweep failed", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Failure handling

    private func unavailableReason() -> String? {
        health.withLockedValue { health in
            if !health.schemaReady { return "the store is not ready (schema not created yet: \(health.lastError))" }
            if NIODeadline.now() < health.unavailableUntil { return "the store failed recently (\(health.lastError)); retrying shortly" }
            return nil
        }
    }

    /// Keys longer than this are stored as "sha256:" and the hex SHA-256 of the key (71
    /// octets): PostgreSQL's B-tree index takes at most about 2,700 octets per entry, and a
    /// longer key (a sender and a recipient of 2 KB each) made its hit fail. The form is
    /// text, so a key listed that way can be given to `ratelimit status` and `reset`.
    static let longestStoredKey = 512

    static func stored(_ key: [UInt8]) -> ByteBuffer {
        guard key.count > longestStoredKey else { return ByteBuffer(bytes: key) }
        let hex = Array("0123456789abcdef".utf8)
        var text = RateKeySpec.digestPrefix
        for byte in SHA256.hash(data: key) { text += [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]] }
        return ByteBuffer(bytes: text)
    }

    /// An error about one row (a value out of range, a key too long for the index: SQLSTATE
    /// classes 22, 23 and 54), not about the store: it fails that hit only and does not count
    /// toward pausing the store, so a client cannot make every rule use its fail action.
    static func isAboutTheRow(_ error: any Error) -> Bool {
        guard let state = (error as? PSQLError)?.serverInfo?[.sqlState] else { return false }
        return state.hasPrefix("22") || state.hasPrefix("23") || state.hasPrefix("54")
    }

    /// Consecutive failures after which hits stop waiting for retry_interval.
    static let failuresBeforePause = 3

    private func noteFailure(_ error: any Error, during what: String) {
        failuresTotal.increment()
        if Self.isAboutTheRow(error) { return }
        let text = Self.describe(error)
        let first = health.withLockedValue { health -> Bool in
            health.consecutiveFailures += 1
            if health.consecutiveFailures >= Self.failuresBeforePause {
                health.unavailableUntil = .now() + settings.retryInterval
            }
            health.lastError = text
            defer { health.failing = true }
            return !health.failing
        }
        if first {
            logger.error("rate-limit store unavailable: rules use their fail action until it is back",
                         metadata: ["store": "postgres", "during": "\(what)", "error": "\(text)"])
        }
    }

    private func noteSuccess() {
        let recovered = health.withLockedValue { health -> Bool in
            health.consecutiveFailures = 0
            defer { health.failing = false }
            return health.failing
        }
        if recovered { logger.notice("rate-limit store is back", metadata: ["store": "postgres"]) }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] { return "\(error.code): \(message)" }
            return "\(error.code)"
        }
        return "\(error)"
    }

    /// Runs `body` and completes the future with its result, or fails it once
    /// statement_timeout has passed (and cancels the work), whichever comes first.
    private func within(_ eventLoop: any EventLoop,
                        _ body: @escaping @Sendable () async throws -> GCRAOutcome) -> EventLoopFuture<GCRAOutcome> {
        let promise = eventLoop.makePromise(of: GCRAOutcome.self)
        let answered = NIOLockedValueBox(false)
        @Sendable func claim() -> Bool {
            answered.withLockedValue { done in
                if done { return false }
                done = true
                return true
            }
        }
        let task = Task {
            do {
                let outcome = try await body()
                if claim() {
                    self.noteSuccess()
                    promise.succeed(outcome)
                }
            } catch {
                if claim() {
                    self.noteFailure(error, during: "a hit")
                    promise.fail(CounterStoreFailure(Self.describe(error)))
                }
            }
        }
        let timeout = settings.statementTimeout
        let timer = eventLoop.scheduleTask(in: timeout) {
            guard claim() else { return }
            task.cancel()
            let failure = CounterStoreFailure("no answer within \(BackstopCore.DurationText.format(timeout))")
            self.noteFailure(failure, during: "a hit")
            promise.fail(failure)
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }
}
