// Two real Backstop servers share one limit through one real PostgreSQL; with PostgreSQL
// stopped mid-test every request is still answered within the deadline with the rule's fail
// action, and once it is back counting resumes where it stopped.

import Testing
import Dispatch
import Foundation
import Logging
import NIOCore
@testable import BackstopCore
@testable import BackstopServer
@testable import BackstopPostgres

private let logger: Logger = {
    var logger = Logger(label: "test.postgres")
    logger.logLevel = .error
    return logger
}()

private let storeDown = "DEFER 4.3.0 Rate-limit store unavailable"
private let overLimit = "DEFER 4.7.1 Rate limit exceeded, try again later"

/// `timeout` is the store's connect and statement timeout; the deadline is 4 s longer.
private func configuration(port: Int, limit: String, burst: Int? = nil, timeout: Int = 2, user: String = "postgres",
                           key: String = "client_address") -> String {
    """
    [[listen]]
    address = "127.0.0.1:0"

    [policy]
    rcpt = ["ratelimit"]
    deadline = "\(timeout + 4)s"

    [ratelimit]
    store = "postgres"

    [ratelimit.postgres]
    host = "127.0.0.1"
    port = \(port)
    user = "\(user)"
    database = "postgres"
    pool_size = 4
    connect_timeout = "\(timeout)s"
    statement_timeout = "\(timeout)s"
    retry_interval = "300ms"

    [[ratelimit.rule]]
    name = "shared"
    key = "\(key)"
    count = "recipient"
    limit = "\(limit)"\(burst.map { "\nburst = \($0)" } ?? "")
    fail_action = "\(storeDown)"
    """
}

/// One Backstop server with its own engine and its own PostgreSQL store.
private struct Instance {
    let server: PolicyServer
    let store: PostgresCounterStore
    let check: RateLimitCheck

    static func start(_ toml: String) async throws -> Instance {
        CounterStoreRegistry.register("postgres", PostgresCounterStoreBackend())
        let config = try Configuration.parse(toml, file: "pg.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: logger)
        let check = try #require(engine.checks["ratelimit"] as? RateLimitCheck)
        let store = try #require(check.store as? PostgresCounterStore)
        let server = PolicyServer(config: config, engine: engine, logger: logger)
        try await server.start()
        // The store creates its schema in the background; wait for it.
        for _ in 0..<200 where !store.isReady { try await Task.sleep(nanoseconds: 100_000_000) }
        #expect(store.isReady, "the schema was created")
        return Instance(server: server, store: store, check: check)
    }

    func client(timeoutSeconds: Int = 10) throws -> Connection {
        Connection(try PolicyClient(endpoint: ListenerSettings.parseEndpoint(server.boundAddresses[0])!, timeoutSeconds: timeoutSeconds))
    }

    func stop() async {
        await server.stop()
        store.shutdown()
    }
}

private func rcpt(_ client: String) -> [(String, String)] {
    [("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", client),
     ("sender", "a@example.org"), ("recipient", "b@example.net"), ("instance", "1.2.3")]
}

/// One policy connection, used by one thread at a time (the tests hand it between threads).
private final class Connection: @unchecked Sendable {
    let client: PolicyClient
    init(_ client: PolicyClient) { self.client = client }
    func ask(_ pairs: [(String, String)]) throws -> String? { try client.ask(pairs) }
}

/// The action text of an answer block ("action=DUNNO" → "DUNNO").
private func action(_ answer: String?) -> String {
    guard let answer, answer.hasPrefix("action=") else { return "no answer: \(answer ?? "nil")" }
    return String(answer.dropFirst("action=".count))
}

/// Waits until the store counts (the pool is up), using a key of its own. A busy test
/// machine may need a while for the first connections.
/// Whether a request from `client` is let through again within `seconds` (asked every 100 ms).
/// Takes `client`'s whole limit of `count` hits: they pass, the next one is refused.
private func exhaust(_ connection: Connection, _ client: String, count: Int) async throws {
    for _ in 0..<count { #expect(try await ask(connection, rcpt(client)) == "DUNNO") }
    #expect(try await ask(connection, rcpt(client)) == overLimit)
}

private func freedWithin(seconds: Int, _ connection: Connection, _ client: String) async throws -> Bool {
    for _ in 0..<(seconds * 10) {
        try await Task.sleep(nanoseconds: 100_000_000)
        if try await ask(connection, rcpt(client)) == "DUNNO" { return true }
    }
    return false
}

private func waitUntilCounting(_ connection: Connection, key: String) async throws {
    for _ in 0..<150 {
        if action(try await blocking { try connection.ask(rcpt(key)) }) == "DUNNO" { return }
        try await Task.sleep(nanoseconds: 200_000_000)
    }
    Issue.record("the store did not start counting within 30 s")
}

/// Runs `body` with a private PostgreSQL cluster, then removes the cluster, also when `body`
/// fails. Starting and stopping block, so they run off the cooperative pool. Without the
/// PostgreSQL binaries starting fails, and so does the test.
private func withCluster(_ body: (PrivatePostgres) async throws -> Void) async throws {
    let pg = try await blocking({ try PrivatePostgres.start() })
    do {
        try await body(pg)
    } catch {
        _ = try? await blocking { pg.destroy() }
        throw error
    }
    _ = try? await blocking { pg.destroy() }
}

/// Asks over a connection, off the cooperative pool; returns the action text.
private func ask(_ connection: Connection, _ pairs: [(String, String)]) async throws -> String {
    action(try await blocking { try connection.ask(pairs) })
}

/// Runs blocking work (sockets, pg_ctl) on a thread of its own: the cooperative pool (on
/// Linux, Dispatch's workers) must stay free for postgres-nio and for other tests.
private func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// Runs `body` on `count` threads of their own at once and waits for all of them.
private func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    for index in 0..<count {
        Thread {
            body(index)
            done.signal()
        }.start()
    }
    for _ in 0..<count { done.wait() }
}

@Suite(.serialized, .disabled(if: PrivatePostgres.skipped, "BACKSTOP_SKIP_POSTGRES=1")) struct PostgresStoreTests {
    @Test func twoServersShareOneLimitExactly() async throws {
        try await withCluster { pg in
            // Exactness is the point here, not timeouts: generous ones, so a loaded test
            // machine cannot turn a slow statement into the fail action. (A CI run once had
            // hits wait over 8 s: the whole suite runs beside it on two cores, and tests that
            // block a thread of Swift's cooperative pool hold up the store's async work.)
            let toml = configuration(port: pg.port, limit: "25/1h", timeout: 30)
            let a = try await Instance.start(toml)
            let b = try await Instance.start(toml)
            do {
                // Sequential: the second server sees what the first counted.
                let ca = try a.client(timeoutSeconds: 40), cb = try b.client(timeoutSeconds: 40)
                try await waitUntilCounting(ca, key: "192.0.2.250")
                try await waitUntilCounting(cb, key: "192.0.2.251")
                let viaA = try await ask(ca, rcpt("198.51.100.1"))
                let viaB = try await ask(cb, rcpt("198.51.100.1"))
                #expect(viaA == "DUNNO" && viaB == "DUNNO", "\(viaA) / \(viaB)")
                // Concurrent: six connections, three per server, 20 requests each on one key.
                let answers = try await blocking { () -> [String] in
                    let collected = NSLock()
                    nonisolated(unsafe) var all: [String] = []
                    onThreads(6) { worker in
                        guard let client = try? (worker % 2 == 0 ? a : b).client(timeoutSeconds: 40) else { return }
                        var mine: [String] = []
                        for _ in 0..<20 { mine.append(action(try? client.ask(rcpt("203.0.113.9")))) }
                        collected.lock(); all += mine; collected.unlock()
                    }
                    return all
                }
                #expect(answers.count == 120)
                #expect(answers.filter { $0 == "DUNNO" }.count == 25, "120 hits from two servers, exactly 25 admitted")
                #expect(answers.filter { $0 == overLimit }.count == 95, "\(Set(answers))")
                // Either server lists every key with state, and a reset through one is seen by the other.
                let listed = try await a.check.list(rule: "shared", overOnly: true, limit: 10)
                #expect(listed.contains("key 203.0.113.9: over the limit: 0 of 25 available"), "\(listed)")
                #expect(!listed.contains("names only"), "the shared store lists all keys")
                // Administrators read keys and times in SQL without decoding bytes.
                let readable = try await blocking { try pg.sql("SELECT key, full_again_at > now() FROM backstop_ratelimit_readable WHERE key = '203.0.113.9'") }
                #expect(readable.trimmingCharacters(in: .whitespacesAndNewlines) == "203.0.113.9|t", "\(readable)")
                let reset = try await b.check.reset(rule: "shared", key: "203.0.113.9")
                #expect(reset.contains("state forgotten: all 25 available again"), "\(reset)")
                #expect(try await ask(ca, rcpt("203.0.113.9")) == "DUNNO")
                #expect(try await a.check.reset(rule: "shared", key: "198.18.0.1").contains("no state was held"))
            }
            await a.stop()
            await b.stop()
        }
    }

    /// The least-privilege setup docs/ratelimits.md offers: an administrator creates the
    /// schema, and Backstop's role may only read and write rows. It used to run the DDL at
    /// every start (ALTER TABLE needs the owner), and never became ready.
    @Test func aRoleWithRowRightsOnlyCountsAndAChangedLimitFreesKeysAtItsRate() async throws {
        try await withCluster { pg in
            let owner = try await Instance.start(configuration(port: pg.port, limit: "5/1h"))
            await owner.stop()
            _ = try await blocking {
                try pg.sql("""
                    CREATE ROLE limited LOGIN;
                    GRANT SELECT, INSERT, UPDATE, DELETE ON backstop_ratelimit, backstop_schema TO limited;
                    GRANT SELECT ON backstop_ratelimit_readable TO limited
                    """)
            }
            let limited = try await Instance.start(configuration(port: pg.port, limit: "5/1h", timeout: 8, user: "limited"))
            let client = try limited.client()
            try await waitUntilCounting(client, key: "192.0.2.250")
            try await exhaust(client, "198.51.100.7", count: 5)
            await limited.stop()
            // The limit raised in rate but lowered in burst (a reload, or a host with the new
            // configuration): the key's hour-long row counts as the new burst used (the first
            // hit is refused and brings it back), so one hit is free again after 10 ms, not
            // after an hour.
            let faster = try await Instance.start(configuration(port: pg.port, limit: "100/1s", burst: 3, timeout: 8, user: "limited"))
            let again = try faster.client()
            try await waitUntilCounting(again, key: "192.0.2.251")
            #expect(try await ask(again, rcpt("198.51.100.7")) == overLimit)
            // The clamp is written beside the refusal; a loaded machine may take a moment.
            #expect(try await freedWithin(seconds: 5, again, "198.51.100.7"), "the key was not freed within 5 s")
            await faster.stop()
        }
    }

    /// A burst lowered by less than a quarter of the new tolerance: the key's row, 360 s
    /// ahead of what the new limit allows, was never brought back (the margin was a quarter
    /// of the tolerance, 810 s here), and the key was refused until the row drained, six
    /// minutes. Brought back, it frees up at the new rate: one hit after T (1.2 s).
    @Test func aSlightlyLoweredBurstFreesTheKeyAtTheNewRate() async throws {
        try await withCluster { pg in
            let first = try await Instance.start(configuration(port: pg.port, limit: "5/1h", timeout: 8))
            let client = try first.client()
            try await waitUntilCounting(client, key: "192.0.2.252")
            try await exhaust(client, "198.51.100.8", count: 5)
            await first.stop()
            let lowered = try await Instance.start(configuration(port: pg.port, limit: "3000/1h", burst: 2700, timeout: 8))
            let again = try lowered.client()
            try await waitUntilCounting(again, key: "192.0.2.253")
            #expect(try await ask(again, rcpt("198.51.100.8")) == overLimit)
            #expect(try await freedWithin(seconds: 10, again, "198.51.100.8"), "the key was not freed within 10 s")
            await lowered.stop()
        }
    }

    /// A limit whose T is over 117 years (the configuration allows up to 146): the second hit
    /// summed past a bigint (nanoseconds since 1970 + 2 T), the statement failed, and the
    /// rule's fail action (DUNNO) let every hit after the first through.
    @Test func aLimitOfCenturiesIsKept() async throws {
        try await withCluster { pg in
            let instance = try await Instance.start(configuration(port: pg.port, limit: "1/50000d", timeout: 8))
            let client = try instance.client()
            try await waitUntilCounting(client, key: "192.0.2.254")
            #expect(try await ask(client, rcpt("198.51.100.9")) == "DUNNO")
            #expect(try await ask(client, rcpt("198.51.100.9")) == overLimit)
            #expect(try await ask(client, rcpt("198.51.100.9")) == overLimit)
            await instance.stop()
        }
    }

    /// A backlog of expired rows larger than one statement can delete within
    /// statement_timeout: the sweep deletes it in batches, each well inside the timeout. In
    /// one statement it was cancelled at every sweep, and the table only grew. (1,000,000
    /// rows take one statement several seconds; a batch of 5,000, about 20 ms.)
    @Test func aLargeBacklogIsSweptInBatches() async throws {
        try await withCluster { pg in
            let toml = configuration(port: pg.port, limit: "5/1h", timeout: 8)
                .replacingOccurrences(of: "statement_timeout = \"8s\"", with: "statement_timeout = \"500ms\"")
            let instance = try await Instance.start(toml)
            _ = try await blocking {
                try pg.sql("INSERT INTO backstop_ratelimit (rule, key, tat) SELECT 'old', int4send(g), 0 FROM generate_series(1, 1000000) g")
            }
            // A batch that a loaded machine slows past the timeout ends that sweep; the next
            // one goes on. One statement never gets anywhere.
            var left = ""
            for _ in 0..<5 where left != "0" {
                await instance.store.sweep()
                left = try await blocking { try pg.sql("SELECT count(*) FROM backstop_ratelimit WHERE rule = 'old'") }
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
            #expect(left == "0", "rows left: \(left)")
            await instance.stop()
        }
    }

    /// A key longer than PostgreSQL's B-tree index takes (about 2,700 octets) is stored as
    /// its SHA-256 and counted; before, its hits failed, and three in a row paused the store
    /// for every rule and client.
    @Test func aLongKeyIsCountedAndDoesNotPauseTheStore() async throws {
        try await withCluster { pg in
            let server = try await Instance.start(configuration(port: pg.port, limit: "2/1h", key: "sender"))
            do {
                let client = try server.client()
                try await waitUntilCounting(client, key: "192.0.2.250")
                var long = rcpt("192.0.2.9")
                // Random letters: PostgreSQL compresses an index entry, and a repeated one fits.
                let letters = Array("abcdefghijklmnopqrstuvwxyz0123456789")
                long[3] = ("sender", String((0..<3_000).map { _ in letters.randomElement()! }) + "@example.org")
                #expect((try await ask(client, long)) == "DUNNO")
                #expect((try await ask(client, long)) == "DUNNO")
                // (Its text is left out: Postfix's reply line with a 3,000-octet sender has no room.)
                #expect((try await ask(client, long)) == "DEFER 4.7.1", "the long key is counted")
                #expect((try await ask(client, rcpt("192.0.2.9"))) == "DUNNO", "the store still answers for other keys")
                // Listed by its digest, which status and reset take as it is (it was listed
                // blank, and the form matched no row).
                let listed = try await server.check.list(rule: "shared", overOnly: true, limit: 10)
                let digest = try #require(listed.split(separator: " ").first { $0.hasPrefix("sha256:") }, "\(listed)")
                let form = String(digest.prefix(71))
                #expect(RateKeySpec.isDigestForm(Array(form.utf8)), "\(listed)")
                #expect(try await server.check.status(rule: "shared", key: form).contains("over the limit"))
                #expect(try await server.check.reset(rule: "shared", key: form).contains("state forgotten"))
                #expect((try await ask(client, long)) == "DUNNO", "reset by its digest")
            } catch {
                Issue.record("\(error)\n\(pg.log.suffix(2000))")
            }
            await server.stop()
        }
    }

    @Test func storeDownMeansFailActionWithinTheDeadlineThenCountingResumes() async throws {
        try await withCluster { pg in
            let server = try await Instance.start(configuration(port: pg.port, limit: "3/1h"))
            do {
                let client = try server.client()
                try await waitUntilCounting(client, key: "192.0.2.250")
                let key = "192.0.2.44"
                #expect((try await ask(client, rcpt(key))) == "DUNNO")
                #expect((try await ask(client, rcpt(key))) == "DUNNO")

                try await blocking { try pg.stopServer() }
                for i in 0..<8 {
                    let started = DispatchTime.now().uptimeNanoseconds
                    let answer = action(try await blocking { try client.ask(rcpt(key)) })
                    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
                    #expect(answer == storeDown, "request \(i) with PostgreSQL down")
                    #expect(elapsed < 5.0, "answered in \(elapsed)s: statement_timeout is 2s, the deadline 6s")
                }

                try await blocking { try pg.startServer() }
                // It recovers by itself: poll with another key until the store answers again.
                var recovered = false
                for _ in 0..<100 {
                    if action(try await blocking { try client.ask(rcpt("192.0.2.200")) }) == "DUNNO" { recovered = true; break }
                    try await Task.sleep(nanoseconds: 200_000_000)
                }
                #expect(recovered, "the store came back without a restart of Backstop")
                // The two hits from before the outage are still counted: one left, then refused.
                #expect((try await ask(client, rcpt(key))) == "DUNNO")
                #expect((try await ask(client, rcpt(key))) == overLimit)
            } catch {
                Issue.record("\(error)\n\(pg.log.suffix(2000))")
            }
            await server.stop()
        }
    }

    @Test func aSlowStoreIsCutOffByTheStatementTimeout() async throws {
        try await withCluster { pg in
            let server = try await Instance.start(configuration(port: pg.port, limit: "100/1h"))
            do {
                let client = try server.client()
                try await waitUntilCounting(client, key: "192.0.2.8")
                // Another session holds the row lock for ten seconds (a busy machine may take seconds to
                // see it hold the lock): the hit must wait for it.
                let locker = Task {
                    try await blocking { try PrivatePostgres.run("/usr/bin/env", ["psql", "-h", "127.0.0.1", "-p", "\(pg.port)", "-U", "postgres",
                        "-d", "postgres", "-c",
                        "BEGIN; SELECT * FROM backstop_ratelimit FOR UPDATE; SELECT pg_sleep(10); COMMIT;"]) }
                }
                // Wait until that session really holds the lock (a busy machine may be slow to start psql).
                var locked = false
                for _ in 0..<100 where !locked {
                    let sessions = try await blocking {
                        try PrivatePostgres.run("/usr/bin/env", ["psql", "-h", "127.0.0.1", "-p", "\(pg.port)", "-U", "postgres",
                            "-d", "postgres", "-tA", "-c",
                            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(10)%' AND pid <> pg_backend_pid()"])
                    }
                    locked = sessions.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
                    if !locked { try await Task.sleep(nanoseconds: 100_000_000) }
                }
                #expect(locked, "the locking session started")
                let started = DispatchTime.now().uptimeNanoseconds
                let answer = action(try await blocking { try client.ask(rcpt("192.0.2.8")) })
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
                #expect(answer == storeDown)
                #expect(elapsed < 5.0, "answered in \(elapsed)s: statement_timeout is 2s, the deadline 6s")
                _ = try await locker.value
            } catch {
                Issue.record("\(error)")
            }
            await server.stop()
        }
    }

    /// The password file is read again at every reload: `serve`, once it has given up root,
    /// checks that server.user can read it, as it does the tables (a root-only file loaded
    /// at start, and then every reload failed without a word at start).
    @Test func thePasswordFileIsAmongTheFilesReadAtReload() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pw-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "  secret \n".write(toFile: dir + "/pg-password", atomically: false, encoding: .utf8)
        CounterStoreRegistry.register("postgres", PostgresCounterStoreBackend())
        let toml = configuration(port: PrivatePostgres.freePort(), limit: "1/1h")
            .replacingOccurrences(of: "user = \"postgres\"", with: "user = \"postgres\"\npassword_file = \"pg-password\"")
        let config = try Configuration.parse(toml, file: dir + "/backstop.toml")
        let settings = try #require(config.checks["ratelimit"] as? RateLimitSettings)
        let check = RateLimitCheck(settings: settings, store: MemoryCounterStore(maxKeys: 10, sweepInterval: nil))
        #expect(check.files == [dir + "/pg-password"])
        guard case .backend(_, let backend) = settings.store, let pg = backend as? PostgresStoreSettings else {
            Issue.record("not the postgres store"); return
        }
        #expect(pg.password == "secret", "blanks around it are not part of it")
    }

    /// check-config builds the engine to check it, and a PostgreSQL store then opened its
    /// pool: connections to the database a configuration under review names (and the schema
    /// created there if the check was quick). Checking opens none; serving does.
    @Test func checkingAConfigurationOpensNoConnection() async throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                guard bind(fd, $0, length) == 0, listen(fd, 16) == 0, getsockname(fd, $0, &length) == 0 else { throw CocoaError(.fileWriteUnknown) }
            }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        func connected(within milliseconds: Int32) -> Bool {
            var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            return Glibc.poll(&poll, 1, milliseconds) == 1
        }
        CounterStoreRegistry.register("postgres", PostgresCounterStoreBackend())
        let config = try Configuration.parse(configuration(port: port, limit: "1/1h"), file: "pg.toml")
        _ = try EngineBuilder.build(config, previous: nil, logger: logger, validating: true)
        #expect(!connected(within: 1_000), "checking the configuration connected to the database")
        let engine = try EngineBuilder.build(config, previous: nil, logger: logger)
        #expect(connected(within: 5_000), "a server's store connects (what the test watches for)")
        ((engine.checks["ratelimit"] as? RateLimitCheck)?.store as? PostgresCounterStore)?.shutdown()
    }

    @Test func withoutADatabaseTheDefaultFailActionLetsMailThrough() async throws {
        // Nothing listens on this port: the store never gets its schema, every hit fails at once.
        let toml = configuration(port: PrivatePostgres.freePort(), limit: "1/1h")
            .replacingOccurrences(of: "fail_action = \"\(storeDown)\"", with: "")
        CounterStoreRegistry.register("postgres", PostgresCounterStoreBackend())
        let config = try Configuration.parse(toml, file: "pg.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: logger)
        let server = PolicyServer(config: config, engine: engine, logger: logger)
        try await server.start()
        do {
            let client = Connection(try PolicyClient(endpoint: ListenerSettings.parseEndpoint(server.boundAddresses[0])!,
                                                     timeoutSeconds: 10))
            for _ in 0..<3 {
                let started = DispatchTime.now().uptimeNanoseconds
                #expect(try await ask(client, rcpt("192.0.2.1")) == "DUNNO", "no opinion: mail flows")
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
                #expect(elapsed < 5.0, "answered in \(elapsed)s")
            }
        } catch {
            Issue.record("\(error)")
        }
        await server.stop()
        ((engine.checks["ratelimit"] as? RateLimitCheck)?.store as? PostgresCounterStore)?.shutdown()
    }
}
