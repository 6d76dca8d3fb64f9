// The SPF engine as the rest of Backstop sees it: evaluate(query) → outcome. An outcome is
// kept in the outcome cache on exactly the inputs its records read (client address and
// domain; the local part or HELO only when a macro reads them), so a hit is answered on
// the caller's event loop with no hop. A miss goes to a worker process on the same loop
// when one is there, with the DNS answers it will need. It decides nothing about what to
// answer Postfix (SPFCheck does) and never runs libspf2 itself.

import BackstopCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

public final class SPFVerifier: Sendable {
    public struct Settings: Sendable, Equatable {
        /// Resolvers to ask; empty means the nameservers of /etc/resolv.conf.
        public var resolvers: [DNSResolverAddress] = []
        /// One DNS question never takes longer than this (all resolvers together).
        public var dnsTimeout: TimeAmount = .seconds(2)
        /// One evaluation never takes longer than this, however many queries it needs.
        public var evaluationDeadline: TimeAmount = .seconds(4)
        public var dnsCache = SPFDNS.Limits()
        /// Worker processes in all. One by default: a worker holds 256 evaluations and never
        /// waits on DNS, and one process woken for several frames at a time costs less CPU
        /// per evaluation than several woken for one each (docs/spf.md).
        public var workers = 1
        /// Evaluations waiting for a worker, per worker; beyond this they get temperror at once.
        public var queueSize = 1_000
        /// The receiving host's name, for %{r}.
        public var receiver = "unknown"
        /// Hard cap on DNS queries per evaluation, whatever the record says: above what RFC
        /// 7208's limits allow (10 terms × (1 + 10 MX/PTR names) + exp + %{p}).
        public var maxQueries = 140
        /// The user worker processes run as (they switch to it when started as root).
        public var workerUser = "nobody"
        /// How long an outcome is kept at most (shorter when its DNS answers expire sooner).
        public var resultCacheTTL: TimeAmount = .seconds(60)
        public var resultCacheSize = 10_000
        public var resultCacheBytes = 8 << 20
        /// A worker start or reap that takes this long is logged as an error (not a setting
        /// of the configuration: tests shorten it).
        var slowProcessWork: TimeAmount = .seconds(10)
        /// Record and explanation octets one worker may hold across its evaluations (not a
        /// setting of the configuration: tests lower it). A record parses to up to 36 times
        /// its size, so 8 MiB is at most ~300 MB of a worker's 1 GiB of address space.
        var workerRecordBudget = 8 << 20

        public init() {}
    }

    public let settings: Settings
    let dns: SPFDNS
    private let explicitSpawner: (any SPFSpawner)?
    let executable: String

    /// The spawner given, else the process-wide one (read when a worker starts, so a
    /// supervisor started after this verifier was built is used).
    var spawner: any SPFSpawner { explicitSpawner ?? SPFProcesses.spawner }
    let logger: Logger
    let metrics = SPFMetrics()
    private let outcomes: BoundedCache<OutcomeKey.Slot, KeptOutcome>
    private let slots = NIOLockedValueBox<[SPFWorkerSlot]>([])
    private let stopped = NIOLockedValueBox(false)
    private let completed = Atomic<Int>(0)
    private let restarts = NIOLockedValueBox<[SPFRestartReason: Int]>([:])

    /// Worker processes replaced since start, by reason (for tests and operators).
    public var workerRestarts: [SPFRestartReason: Int] { restarts.withLockedValue { $0 } }

    func countRestart(_ reason: SPFRestartReason) {
        metrics.workerRestarts[reason]?.increment()
        restarts.withLockedValue { $0[reason, default: 0] += 1 }
    }

    /// Evaluations workers completed since start (cache hits are not evaluations).
    public var evaluationCount: Int { completed.load(ordering: .relaxed) }

    /// `executable` is the `backstop` binary whose `spf-worker` mode runs the workers
    /// (tests may name a stand-in); `spawner` starts them.
    public init(settings: Settings, logger: Logger = Logger(label: "backstop.spf"),
                executable: String? = SPFProcesses.executable, spawner: (any SPFSpawner)? = nil) {
        self.settings = settings
        self.logger = logger
        self.executable = executable ?? "/proc/self/exe"
        self.explicitSpawner = spawner
        dns = SPFDNS(resolver: DNSResolver(resolvers: settings.resolvers, timeout: settings.dnsTimeout),
                     limits: settings.dnsCache, metrics: metrics)
        outcomes = BoundedCache(maxEntries: settings.resultCacheSize, maxBytes: settings.resultCacheBytes, shards: 16)
    }

    deinit { shutdown() }

    // MARK: the outcome cache

    /// Hashed once, when made: the cache's shard choice and its dictionary then hash one
    /// word, not the strings, on every lookup. The hash is the process's seeded Hasher (the
    /// domain is the sender's choice, so an unkeyed hash would let senders pick collisions).
    struct OutcomeKey: Hashable, Sendable {
        struct Fields: Hashable, Sendable {
            var identity: SPFIdentity
            var client: IPAddress
            var upperNibbles: Bool
            /// As the sender wrote it: a sender who writes another case shares nothing (but is right).
            var domain: String
            /// Set only when a record or explanation on the outcome's path reads the sender.
            var localPart: String?
            var helo: String?

            /// The strings by their octets, as the worker sees them (Octets).
            static func == (a: Fields, b: Fields) -> Bool {
                a.identity == b.identity && a.client == b.client && a.upperNibbles == b.upperNibbles
                    && Octets.equal(a.domain, b.domain) && Octets.equal(a.localPart, b.localPart) && Octets.equal(a.helo, b.helo)
            }

            /// The fixed fields as one word (IPv4) or three (IPv6), then the strings' octets (a
            /// nil string is left out, which the first word's flags say): one combine per word
            /// instead of a hash of each field through its own conformance (~700 instructions
            /// per request before).
            func hash(into hasher: inout Hasher) {
                var flags: UInt64 = identity == .helo ? 1 : 0
                if upperNibbles { flags |= 2 }
                if localPart != nil { flags |= 4 }
                if helo != nil { flags |= 8 }
                switch client {
                case .v4(let address):
                    hasher.combine(flags | 16 | UInt64(address) << 32)
                case .v6(let high, let low):
                    hasher.combine(flags)
                    hasher.combine(high)
                    hasher.combine(low)
                }
                Octets.hash(domain, into: &hasher)
                if let localPart { Octets.hash(localPart, into: &hasher) }
                if let helo { Octets.hash(helo, into: &hasher) }
            }
        }
        let fields: Fields
        let fingerprint: Int

        init(_ fields: Fields) {
            // Hashed in place (`hashValue` went through the generic path, with a copy).
            var hasher = Hasher()
            fields.hash(into: &hasher)
            fingerprint = hasher.finalize()
            self.fields = fields
        }

        static func == (a: OutcomeKey, b: OutcomeKey) -> Bool { a.fingerprint == b.fingerprint && a.fields == b.fields }
        func hash(into hasher: inout Hasher) { hasher.combine(fingerprint) }

        /// What the cache's table holds: the fingerprint alone, one word, so a probe of the
        /// table copies and compares no string (a key with strings retained and released
        /// each one it probed, cold in memory). The entry carries the fields, and a hit is
        /// taken only when they are this key's: two keys sharing a fingerprint make a
        /// miss, never one the other's outcome.
        struct Slot: CacheKey {
            let fingerprint: Int
            /// Made with Hasher, seeded per process: the shard comes from it as it is.
            var shardHash: Int { fingerprint }
        }

        var slot: Slot { Slot(fingerprint: fingerprint) }
    }

    /// One entry of the outcome cache. A class: a hit copies one reference out of the cache.
    final class KeptOutcome: Sendable {
        /// The key it was kept under, checked on every hit.
        let key: OutcomeKey.Fields
        let kept: Kept

        enum Kept: Sendable {
            case outcome(SPFOutcome)
            /// The outcome depends on more than client and domain: look again with these.
            case refine(SPFMacroSet)
        }

        init(_ key: OutcomeKey, _ kept: Kept) {
            self.key = key.fields
            self.kept = kept
        }

        /// Whether it was kept under `fields` (compared where it lies, not copied out).
        func isKept(under fields: borrowing OutcomeKey.Fields) -> Bool { key == fields }

        /// The kept outcome as answered to `query`, or nil when this entry only says to
        /// look again (read where it lies: no copy of the outcome on the way).
        func answer(_ query: SPFQuery) -> SPFOutcome? {
            guard case .outcome(let outcome) = kept else { return nil }
            return outcome.answering(query)
        }

        /// What to look again with, when the outcome depends on more than client and domain.
        var refinement: SPFMacroSet? {
            guard case .refine(let macros) = kept else { return nil }
            return macros
        }
    }

    /// What the cache holds for `key`, when it is that key's.
    private func kept(_ key: OutcomeKey, now: NIODeadline) -> KeptOutcome? {
        guard let entry = outcomes.value(key.slot, now: now), entry.isKept(under: key.fields) else { return nil }
        return entry
    }

    /// What an evaluation of `query` is keyed on before its records are known.
    func baseKey(_ query: SPFQuery, client: IPAddress, domain: String) -> OutcomeKey {
        OutcomeKey(.init(identity: query.identity, client: client,
                         upperNibbles: !client.isV4 && query.clientAddress.contains(where: { "ABCDEF".contains($0) }),
                         domain: domain, localPart: nil, helo: nil))
    }

    private func refined(_ key: OutcomeKey, _ query: SPFQuery, _ macros: SPFMacroSet) -> OutcomeKey {
        var fields = key.fields
        if !macros.isDisjoint(with: SPFMacroSet.readsLocalPart) { fields.localPart = query.checkedMailbox }
        if macros.contains(.helo) { fields.helo = query.helo }
        return OutcomeKey(fields)
    }

    /// A cached outcome for `query`, or nil: no evaluation, no hop.
    public func cachedOutcome(_ query: SPFQuery, now: NIODeadline = .now()) -> SPFOutcome? {
        guard settings.resultCacheTTL > .zero, let client = query.client else { return nil }
        // Never evaluated (precheck), so never answered from another sender's outcome either.
        if Octets.containsNUL(query.checkedMailbox) { return nil }
        let key = baseKey(query, client: client, domain: query.domain)
        var entry = kept(key, now: now)
        if let macros = entry?.refinement { entry = kept(refined(key, query, macros), now: now) }
        guard let outcome = entry?.answer(query) else {
            metrics.outcomeCacheMisses.increment()
            return nil
        }
        metrics.outcomeCacheHits.increment()
        return outcome
    }

    /// Tests: keeps `outcome`, as kept for `key`, under `slot`: what two keys sharing a
    /// fingerprint would leave in the table.
    func keep(_ outcome: SPFOutcome, as key: OutcomeKey, under slot: OutcomeKey.Slot) {
        outcomes.insert(slot, KeptOutcome(key, .outcome(outcome)), cost: outcome.cost, expires: .now() + .seconds(60))
    }

    /// Keeps a worker's outcome for as long as its answers and `result_cache_ttl` allow.
    func record(_ job: SPFJob, _ outcome: SPFOutcome) {
        completed.add(1, ordering: .relaxed)
        guard outcome.result != .temperror, settings.resultCacheTTL > .zero, let client = job.query.client else { return }
        // An answer's TTL of 0 counts as the DNS cache's shortest, as the DNS cache keeps it.
        let seconds = min(Int64(settings.resultCacheTTL.nanoseconds / 1_000_000_000), Int64(max(job.ttl, dns.limits.minTTL)))
        guard seconds >= 1 else { return }
        let now = NIODeadline.now()
        let expires = now + .seconds(seconds)
        let key = baseKey(job.query, client: client, domain: job.query.domain)
        let dependsOnMore = !job.macros.isDisjoint(with: SPFMacroSet.readsLocalPart.union(.helo))
        if dependsOnMore {
            let refinedKey = refined(key, job.query, job.macros)
            outcomes.insert(key.slot, KeptOutcome(key, .refine(job.macros)), cost: 120, expires: expires, now: now)
            outcomes.insert(refinedKey.slot, KeptOutcome(refinedKey, .outcome(outcome)), cost: outcome.cost, expires: expires, now: now)
        } else {
            outcomes.insert(key.slot, KeptOutcome(key, .outcome(outcome)), cost: outcome.cost, expires: expires, now: now)
        }
    }

    // MARK: evaluating

    /// The outcome of `query`; the future always succeeds (temperror when no answer is
    /// possible in time), on `loop`.
    public func evaluate(_ query: SPFQuery, deadline: NIODeadline, on loop: any EventLoop) -> EventLoopFuture<SPFOutcome> {
        let domain: DNSName
        switch SPFVerifier.precheck(query) {
        case .failure(let immediate): return loop.makeSucceededFuture(immediate.outcome)
        case .success(let name): domain = name
        }
        if let hit = cachedOutcome(query) { return loop.makeSucceededFuture(hit) }
        let client = query.client!
        // A sender longer than a worker takes matters only to a record that reads its local
        // part (%{s}, %{l}): the worker is given postmaster@domain instead, and the outcome
        // becomes permerror only when a record or explanation on its path read it. (Refusing
        // every such sender as permerror, which accepts by default, let a client forge any
        // sender with a 1,100-octet local part.)
        let standIn = query.checkedMailbox.utf8.count > SPFWire.maxSender
        let mailbox = Array((standIn ? "postmaster@" + query.domain : query.checkedMailbox).utf8)
        let promise = loop.makePromise(of: SPFOutcome.self)
        let base = SPFWire.Evaluate(id: 0, identity: query.identity,
                                       upperNibbles: !client.isV4 && query.clientAddress.contains(where: { "ABCDEF".contains($0) }),
                                       client: client.octets, sender: mailbox, helo: Array(query.helo.utf8), answers: [])
        let effective = min(deadline, .now() + settings.evaluationDeadline)
        let top = DNSQuestion(domain, .txt)
        let submit: @Sendable (SPFAnswer) -> Void = { answer in
            var request = base
            request.answers = [SPFWire.Answer(top, answer)]
            var sent: Set<DNSQuestion> = [top]
            self.dns.related(to: answer, client: request.client, sent: &sent, into: &request.answers)
            guard let slot = self.slot(for: loop) else {
                return promise.succeed(SPFOutcome(result: .temperror, query: query, problem: "SPF is stopping"))
            }
            let job = SPFJob(query: query, request: request, promise: promise, deadline: effective, standIn: standIn)
            if slot.loop.inEventLoop {
                slot.submit(job)
            } else {
                slot.loop.execute { slot.submit(job) }
            }
        }
        // Every evaluation starts with the domain's TXT record: fetch it before the worker
        // has to ask. A temperror answers at the deadline if DNS is slower than that.
        if let cached = dns.cached(top) {
            submit(cached)
        } else {
            let timer = loop.scheduleTask(deadline: effective) {
                promise.succeed(SPFOutcome(result: .temperror, query: query, problem: "SPF evaluation deadline expired"))
            }
            dns.answer(top, on: loop).whenSuccess { answer in
                guard NIODeadline.now() < effective else { return }
                timer.cancel()
                submit(answer)
            }
        }
        return promise.futureResult
    }

    /// An outcome given without an evaluation (an Error only to travel in a Result).
    struct Immediate: Error {
        let outcome: SPFOutcome
        init(_ result: SPFResult, _ query: SPFQuery, _ problem: String) {
            outcome = SPFOutcome(result: result, query: query, problem: problem)
        }
    }

    /// The domain to evaluate as a DNS name, or the outcome when the query cannot be
    /// evaluated at all.
    static func precheck(_ query: SPFQuery) -> Result<DNSName, Immediate> {
        guard query.client != nil else {
            return .failure(Immediate(.none, query, "client address is not an IP address"))
        }
        if let problem = SPFQuery.domainProblem(query.domain) {
            // RFC 7208 §4.3: a malformed or single-label domain gives none.
            return .failure(Immediate(.none, query, problem))
        }
        // libspf2 takes C strings: it would see only what comes before a NUL, and evaluate
        // another sender than the one the outcome is kept for. (A HELO name reaches the
        // outcome only through %{h}, which Backstop expands itself, or as postmaster@HELO,
        // the mailbox checked for an empty sender.)
        if Octets.containsNUL(query.checkedMailbox) {
            return .failure(Immediate(.none, query, "the sender (or HELO name, for an empty sender) contains a NUL octet"))
        }
        if query.helo.utf8.count > SPFWire.maxHelo {
            return .failure(Immediate(.permerror, query, "HELO name longer than \(SPFWire.maxHelo) octets"))
        }
        guard let name = DNSName(text: query.domain) else {
            return .failure(Immediate(.none, query, "domain cannot be asked in DNS"))
        }
        return .success(name)
    }

    /// The slot for evaluations from `loop`: the least busy one on that loop, a new one
    /// there while fewer than `workers` exist, else the least busy anywhere; nil once the
    /// verifier is shut down (a request of an engine replaced by a reload can still get
    /// here: a slot made now would start a worker that nothing stops). `stopped` is read
    /// under the slots' lock, and `shutdown` sets it before it takes that lock to stop them.
    private func slot(for loop: any EventLoop) -> SPFWorkerSlot? {
        slots.withLockedValue { list in
            if stopped.withLockedValue({ $0 }) { return nil }
            // The least busy on this loop, found without building a list (once per evaluation).
            var best: SPFWorkerSlot?
            var bestLoad = Int.max
            for slot in list where slot.loop === loop {
                let load = slot.load.load(ordering: .relaxed)
                if load < bestLoad { (best, bestLoad) = (slot, load) }
            }
            if let best, bestLoad == 0 || list.count >= max(1, settings.workers) { return best }
            if list.count < max(1, settings.workers) {
                let slot = SPFWorkerSlot(index: list.count, loop: loop, verifier: self)
                list.append(slot)
                return slot
            }
            return list.min { $0.load.load(ordering: .relaxed) < $1.load.load(ordering: .relaxed) }!
        }
    }

    /// The same evaluation for the CLI and tests, on a shared event loop.
    public func evaluate(ip: String, sender: String, helo: String, identity: SPFIdentity = .mailfrom) async -> SPFOutcome {
        let query = SPFQuery(clientAddress: ip, sender: sender, helo: helo, identity: identity)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return (try? await evaluate(query, deadline: .now() + settings.evaluationDeadline, on: loop).get())
            ?? SPFOutcome(result: .temperror, query: query, problem: "internal error")
    }

    // MARK: lifecycle

    /// The process ids of the running workers (for tests and operators).
    public var workerProcessIDs: [pid_t] {
        get async { await eachSlot { $0.processID }.compactMap { $0 } }
    }

    /// Evaluations the workers hold right now (written to them, not yet answered).
    public var evaluationsInFlight: Int {
        get async { await eachSlot { $0.inFlight }.reduce(0, +) }
    }

    /// The most octets the server held at once for one of the current workers (tests).
    var mostHeldForAWorker: Int {
        get async { await eachSlot { $0.mostHeld }.max() ?? 0 }
    }

    /// `read` of every slot, each on its own event loop (the only place it may be read); a
    /// slot whose loop no longer runs is left out.
    private func eachSlot<T: Sendable>(_ read: @escaping @Sendable (SPFWorkerSlot) -> T) async -> [T] {
        var values: [T] = []
        for slot in slots.withLockedValue({ $0 }) {
            if let value = try? await slot.loop.submit({ read(slot) }).get() { values.append(value) }
        }
        return values
    }

    /// DNS questions asked of the resolvers since start.
    public var dnsCacheEntries: Int { dns.cache.count }
    public var outcomeCacheEntries: Int { outcomes.count }

    /// Stops every worker once the evaluations in flight have had their time (a reload
    /// replaced this verifier: requests of the old engine may still be waiting on it).
    public func retire() {
        let grace = settings.evaluationDeadline + .seconds(1)
        let loop = slots.withLockedValue { $0.first?.loop } ?? MultiThreadedEventLoopGroup.singleton.next()
        loop.scheduleTask(in: grace) { [self] in shutdown() }
    }

    /// After `shutdown()`: returns once no worker start or reap is under way (at most
    /// `limit`), so that none finishes on an event loop that has ended.
    public func settled(within limit: TimeAmount = .seconds(2)) async {
        // Every slot waits at once: `limit` in all, not per worker.
        let waits = slots.withLockedValue { $0 }.map { slot in slot.loop.flatSubmit { slot.settled(within: limit) } }
        for wait in waits { try? await wait.get() }
    }

    /// Stops every worker and answers what waits; the verifier is done after this.
    public func shutdown() {
        guard stopped.withLockedValue({ s in defer { s = true }; return !s }) else { return }
        for slot in slots.withLockedValue({ $0 }) {
            slot.loop.execute { slot.stop() }
        }
    }
}
