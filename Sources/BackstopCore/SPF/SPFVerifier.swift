// The one place Backstop calls libspf2. SPFVerifier owns a bounded pool of workers, each
// with its own libspf2 server (those are not safe to share between threads): threads in
// this process, or (isolation = "process", SPFIsolation.swift) slots whose thread hands
// the evaluation to a child process running the same Worker code. It gives libspf2
// gives libspf2 a DNS layer of Backstop's own (Worker's lookup/get_spf/get_exp
// callbacks): queries go through DNSClient and DNSCache, every SPF record is checked
// against the RFC 7208 grammar and rewritten into forms libspf2 reads right, and the
// DNS-mechanism and void-lookup limits are counted across include and redirect. It does
// not decide what to answer Postfix: that is SPFCheck.

import CSPF2
import Foundation
import Logging
import Metrics
import NIOCore

public final class SPFVerifier: Sendable {
    public struct Settings: Sendable, Equatable {
        /// Resolvers to ask; empty means the nameservers of /etc/resolv.conf.
        public var resolvers: [DNSResolverAddress] = []
        public var dnsTimeout: TimeAmount = .seconds(2)
        /// One evaluation never takes longer than this, however many queries it needs.
        public var evaluationDeadline: TimeAmount = .seconds(4)
        public var dnsCacheSize = 10_000
        public var workers = 4
        /// Evaluations waiting for a worker; beyond this they get temperror at once.
        public var queueSize = 1_000
        /// The receiving host's name, for the %{r} macro.
        public var receiver = "unknown"
        /// Hard cap on DNS queries (cached or not) per evaluation, whatever the record says:
        /// above what RFC 7208's limits allow (10 terms × (1 + 10 MX/PTR names) + exp + %{p}).
        public var maxQueries = 140
        /// Where libspf2 runs: in worker processes (a crash or hang costs one answer) or in
        /// threads of this process.
        public var isolation: Isolation = .process
        /// The user worker processes switch to when Backstop is still root when it spawns them.
        public var workerUser = "nobody"

        public init() {}
    }

    public enum Isolation: String, Sendable, Equatable, Codable {
        case process, thread
    }

    public let settings: Settings
    let queue: SPFWorkQueue
    let shared: SPFShared
    /// The worker processes' slots in process isolation; empty in thread isolation.
    let slots: [SPFWorkerSlot]

    /// `workerExecutable` is the `backstop` binary whose `spf-worker` mode runs the worker
    /// processes; without one (library tests), process isolation falls back to threads.
    public init(settings: Settings, logger: Logger = Logger(label: "backstop.spf"),
                workerExecutable: String? = SPFVerifier.workerExecutable) {
        self.settings = settings
        let client = DNSClient(resolvers: settings.resolvers)
        let shared = SPFShared(client: client, cache: DNSCache(capacity: settings.dnsCacheSize), settings: settings, logger: logger)
        self.shared = shared
        queue = SPFWorkQueue(capacity: settings.queueSize)
        var slots: [SPFWorkerSlot] = []
        if settings.isolation == .process {
            if let workerExecutable {
                slots = (0..<max(1, settings.workers)).map {
                    SPFWorkerSlot(index: $0, executable: workerExecutable, shared: shared)
                }
            } else {
                logger.notice("spf.isolation is \"process\" but no worker executable is registered: evaluating SPF in threads of this process")
            }
        }
        self.slots = slots
        if !slots.isEmpty {
            for slot in slots {
                let queue = self.queue
                let thread = Thread {
                    SPFVerifier.serve(queue, then: { if !queue.isStopped { slot.replaceLost() } }) { slot.evaluate($0, deadline: $1) }
                    slot.close()
                }
                thread.name = "backstop-spf-\(slot.index)"
                thread.stackSize = 1 << 20
                thread.start()
            }
            return
        }
        SPFVerifier.quietLibrary()
        for index in 0..<max(1, settings.workers) {
            let worker = Worker(shared: shared)
            let queue = self.queue
            let thread = Thread {
                SPFVerifier.serve(queue) { worker.evaluate($0, deadline: $1) }
                worker.close()
            }
            thread.name = "backstop-spf-\(index)"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    deinit {
        queue.stop()
    }

    /// One worker's loop: takes jobs until the queue stops.
    private static func serve(_ queue: SPFWorkQueue, then: () -> Void = {}, _ evaluate: (SPFQuery, NIODeadline) -> SPFOutcome) {
        while let job = queue.next() {
            switch job.start() {
            case .answered:
                continue
            case .expired:
                job.finish(SPFOutcome(result: .temperror, query: job.query,
                                      problem: "SPF evaluation deadline expired while waiting for a worker"))
            case .run:
                job.finish(evaluate(job.query, job.deadline))
            }
            then()
        }
    }

    /// True when evaluations run in worker processes.
    public var isolated: Bool { !slots.isEmpty }

    /// The process ids of the running worker processes (for tests and operators).
    public var workerProcessIDs: [Int32] { slots.compactMap(\.processID) }

    /// Worker processes restarted (killed, crashed or failed to start) since start.
    public var workerRestartCount: Int { shared.workerRestarts.value }

    /// Stops the workers once the queued evaluations are done.
    public func shutdown() { queue.stop() }

    /// Evaluations completed by the workers since start (the caches avoid some).
    public var evaluationCount: Int { shared.evaluations.value }
    /// DNS queries sent to the resolvers since start (cache hits are not counted).
    public var networkQueryCount: Int { shared.networkQueries.value }

    /// Evaluates `query` on a worker; the future succeeds (never fails) on `eventLoop`,
    /// with temperror when the queue is full or `deadline` passes first.
    public func evaluate(_ query: SPFQuery, deadline: NIODeadline, on eventLoop: any EventLoop) -> EventLoopFuture<SPFOutcome> {
        let promise = eventLoop.makePromise(of: SPFOutcome.self)
        let started = NIODeadline.now()
        let effective = min(deadline, started + settings.evaluationDeadline)
        let job = SPFJob(query: query, deadline: effective) { outcome in promise.succeed(outcome) }
        let timer = eventLoop.scheduleTask(deadline: effective) {
            var outcome = SPFOutcome(result: .temperror, query: query, problem: "SPF evaluation deadline expired")
            outcome.elapsed = NIODeadline.now() - started
            job.expire(outcome)
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        if !queue.submit(job) {
            shared.metrics.queueFull.increment()
            var outcome = SPFOutcome(result: .temperror, query: query, problem: "all SPF workers are busy and the queue is full")
            outcome.elapsed = NIODeadline.now() - started
            job.expire(outcome)
        }
        return promise.futureResult
    }

    /// The same evaluation for the CLI and tests, without an event loop.
    public func evaluate(ip: String, sender: String, helo: String, identity: SPFIdentity = .mailfrom) async -> SPFOutcome {
        let query = SPFQuery(clientAddress: ip, sender: sender, helo: helo, identity: identity)
        return await withCheckedContinuation { continuation in
            let deadline = NIODeadline.now() + settings.evaluationDeadline
            let job = SPFJob(query: query, deadline: deadline) { continuation.resume(returning: $0) }
            if !queue.submit(job) {
                job.expire(SPFOutcome(result: .temperror, query: query, problem: "all SPF workers are busy and the queue is full"))
            }
        }
    }

    nonisolated(unsafe) private static var registeredExecutable: String?

    /// The `backstop` executable that worker processes run (`backstop spf-worker`);
    /// registered by the commands that evaluate SPF, nil inside library tests.
    public static var workerExecutable: String? {
        get { quietLock.withLock { registeredExecutable } }
        set { quietLock.withLock { registeredExecutable = newValue } }
    }

    /// Registers the running executable (resolved through /proc/self/exe now, before any
    /// privilege drop) as the worker executable.
    public static func registerRunningExecutable() {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return }
        workerExecutable = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    nonisolated(unsafe) private static var quieted = false
    private static let quietLock = NSLock()

    /// libspf2 prints warnings and debug text on stderr by default; Backstop logs itself.
    static func quietLibrary() {
        quietLock.withLock {
            guard !quieted else { return }
            quieted = true
            backstop_spf_quiet()
        }
    }
}

/// What all workers of one verifier share: the DNS client and cache, counters, settings.
final class SPFShared: Sendable {
    let client: DNSClient
    let cache: DNSCache
    let settings: SPFVerifier.Settings
    let logger: Logger
    let evaluations = LockedCounter()
    let networkQueries = LockedCounter()
    let workerRestarts = LockedCounter()
    let metrics = SPFMetrics()

    init(client: DNSClient, cache: DNSCache, settings: SPFVerifier.Settings, logger: Logger) {
        self.client = client
        self.cache = cache
        self.settings = settings
        self.logger = logger
    }

    /// A cached or fresh answer, following aliases.
    func resolve(_ name: String, _ type: DNSType, timeout: TimeInterval) -> DNSAnswer {
        if let cached = cache.answer(name, type) { return cached }
        networkQueries.add(1)
        metrics.dnsQueries.increment()
        let answer = client.query(name, type, timeout: timeout)
        cache.store(name, type, answer)
        return answer
    }
}

/// The SPF metrics, made once (not per request). Listed in docs/spf.md.
struct SPFMetrics: Sendable {
    let evaluations: [SPFResult: Counter]
    let results: [SPFResult: Counter]
    let dnsQueries = Counter(label: "backstop_spf_dns_queries_total")
    let queueFull = Counter(label: "backstop_spf_queue_full_total")
    let duration = Metrics.Timer(label: "backstop_spf_evaluation_duration_seconds", preferredDisplayUnit: .seconds)
    let workerRestarts: [SPFWorkerSlot.RestartReason: Counter]

    init() {
        var evaluations: [SPFResult: Counter] = [:]
        var results: [SPFResult: Counter] = [:]
        for result in SPFResult.allCases {
            evaluations[result] = Counter(label: "backstop_spf_evaluations_total", dimensions: [("result", result.rawValue)])
            results[result] = Counter(label: "backstop_spf_results_total", dimensions: [("result", result.rawValue)])
        }
        self.evaluations = evaluations
        self.results = results
        var restarts: [SPFWorkerSlot.RestartReason: Counter] = [:]
        for reason in SPFWorkerSlot.RestartReason.allCases {
            restarts[reason] = Counter(label: "backstop_spf_worker_restarts_total", dimensions: [("reason", reason.rawValue)])
        }
        workerRestarts = restarts
    }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add(_ n: Int) { lock.withLock { count += n } }
    var value: Int { lock.withLock { count } }
}

/// One evaluation waiting for, or running on, a worker. Completed exactly once: by the
/// worker, or by the deadline/queue-full path, whichever comes first.
final class SPFJob: @unchecked Sendable {
    let query: SPFQuery
    let deadline: NIODeadline
    private let lock = NSLock()
    private var done = false
    private let complete: @Sendable (SPFOutcome) -> Void

    init(query: SPFQuery, deadline: NIODeadline, complete: @escaping @Sendable (SPFOutcome) -> Void) {
        self.query = query
        self.deadline = deadline
        self.complete = complete
    }

    enum Start { case run, expired, answered }

    /// Claims the job for a worker.
    func start() -> Start {
        lock.withLock {
            if done { return .answered }
            if NIODeadline.now() >= deadline { return .expired }
            return .run
        }
    }

    func finish(_ outcome: SPFOutcome) {
        let first = lock.withLock { () -> Bool in
            if done { return false }
            done = true
            return true
        }
        if first { complete(outcome) }
    }

    func expire(_ outcome: SPFOutcome) { finish(outcome) }
}

/// A bounded FIFO of jobs for the workers.
final class SPFWorkQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [SPFJob] = []
    private var head = 0
    private var stopped = false
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    func submit(_ job: SPFJob) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopped, jobs.count - head < capacity else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// The next job, or nil once stopped and drained.
    func next() -> SPFJob? {
        condition.lock()
        defer { condition.unlock() }
        while head == jobs.count {
            if stopped { return nil }
            condition.wait()
        }
        let job = jobs[head]
        head += 1
        if head > 1024 && head * 2 > jobs.count {
            jobs.removeFirst(head)
            head = 0
        }
        return job
    }

    var isStopped: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopped
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }
}
