// One `spf.workers` slot: keeps one worker process running on one event loop. It starts
// the worker when the first evaluation comes (so after the server has dropped root),
// queues evaluations while it starts, replaces a worker that died, hung or broke the
// protocol (with a backoff, so a crash loop cannot spin), and retires a worker after
// `retireAfter` evaluations so no process lives forever. Only its loop touches it.

import BackstopCore
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// @unchecked Sendable: confined to `loop`, except `load`, which is atomic.
final class SPFWorkerSlot: @unchecked Sendable {
    let index: Int
    let loop: any EventLoop
    let dns: SPFDNS
    private let spawnerOf: @Sendable () -> any SPFSpawner
    var spawner: any SPFSpawner { spawnerOf() }
    let executable: String
    let user: String
    let logger: Logger
    let metrics: SPFMetrics
    let maxQueries: Int
    /// Record and explanation octets its worker may hold across its evaluations.
    let recordBudget: Int
    let receiver: [UInt8]
    let queueSize: Int
    /// A worker that owes an answer this long is stuck.
    let wedgeLimit: TimeAmount
    /// Called with each outcome a worker produced (the verifier caches it).
    let onOutcome: @Sendable (SPFJob, SPFOutcome) -> Void
    /// Called with each replacement of a worker.
    let onRestart: @Sendable (SPFRestartReason) -> Void

    /// Evaluations in flight on one worker process at most; more wait in the slot's queue.
    /// An evaluation waiting on DNS holds its place, so this is the number of evaluations
    /// that can wait on DNS at once with the default single worker: more than Postfix's
    /// default process limit (100 smtpd processes, one request in flight each).
    static let maxInFlight = 256
    /// Evaluations after which a worker is replaced by a fresh one.
    static let retireAfter = 100_000

    /// Evaluations submitted and not yet finished (read by the verifier from any thread).
    let load = Atomic<Int>(0)

    private var current: SPFWorkerConnection?
    private var retiring: [SPFWorkerConnection] = []
    private var starting = false
    private var queue = CircularBuffer<SPFJob>()
    private var failures = 0
    private var notBefore = NIODeadline.uptimeNanoseconds(0)
    private var retryScheduled = false
    private var stopped = false

    init(index: Int, loop: any EventLoop, verifier: SPFVerifier) {
        self.index = index
        self.loop = loop
        dns = verifier.dns
        spawnerOf = { [weak verifier] in verifier?.spawner ?? SPFProcesses.spawner }
        executable = verifier.executable
        user = verifier.settings.workerUser
        logger = verifier.logger
        metrics = verifier.metrics
        maxQueries = verifier.settings.maxQueries
        recordBudget = verifier.settings.workerRecordBudget
        receiver = Array(verifier.settings.receiver.utf8)
        queueSize = verifier.settings.queueSize
        wedgeLimit = max(.milliseconds(50), .nanoseconds(verifier.settings.evaluationDeadline.nanoseconds / 2))
        slowProcessWork = verifier.settings.slowProcessWork
        onOutcome = { [weak verifier] job, outcome in verifier?.record(job, outcome) }
        onRestart = { [weak verifier] reason in verifier?.countRestart(reason) }
    }

    /// The current worker's pid (tests and operators); only on `loop`.
    var processID: pid_t? { current?.pid }

    /// Evaluations the current worker holds (written, not yet answered); only on `loop`.
    var inFlight: Int { current?.inFlight ?? 0 }

    /// The most octets the server held at once for the current worker; only on `loop`.
    var mostHeld: Int { current?.mostHeld ?? 0 }

    // MARK: evaluations

    func submit(_ job: SPFJob) {
        loop.assertInEventLoop()
        load.add(1, ordering: .relaxed)
        guard !stopped else { return reject(job, "SPF is stopping") }
        if let worker = current, worker.hasRoom, queue.isEmpty {
            worker.start(job)
            return
        }
        guard queue.count < queueSize else {
            metrics.queueFull.increment()
            return reject(job, "all SPF workers are busy and the queue is full")
        }
        queue.append(job)
        metrics.queueDepth.add(1)
        job.timer = loop.scheduleTask(deadline: job.deadline) { [weak self] in self?.expireQueued(job) }
        if current == nil { ensureWorker() }
    }

    private func reject(_ job: SPFJob, _ why: String) {
        var outcome = SPFOutcome(result: .temperror, query: job.query, problem: why)
        outcome.elapsed = .now() - job.started
        done(job, outcome)
    }

    private func done(_ job: SPFJob, _ outcome: SPFOutcome) {
        load.add(-1, ordering: .relaxed)
        job.promise.succeed(outcome)
    }

    private func expireQueued(_ job: SPFJob) {
        guard let index = queue.firstIndex(where: { $0 === job }) else { return }
        queue.remove(at: index)
        metrics.queueDepth.add(-1)
        reject(job, "SPF evaluation deadline expired while waiting for a worker")
    }

    /// Hands queued evaluations to the worker while it has room.
    private func drain() {
        guard let worker = current else { return }
        let before = queue.count
        while worker.hasRoom, let job = queue.popFirst() {
            job.timer?.cancel()
            worker.start(job)
        }
        metrics.queueDepth.add(queue.count - before)
    }

    /// A worker finished an evaluation (the connection already answered its promise).
    func finished(_ job: SPFJob, _ outcome: SPFOutcome, on worker: SPFWorkerConnection) {
        load.add(-1, ordering: .relaxed)
        metrics.evaluations[outcome.result.index].increment()
        metrics.duration.recordNanoseconds(outcome.elapsed.nanoseconds)
        onOutcome(job, outcome)
        if outcome.result != .temperror { failures = 0 }
        if worker === current, worker.evaluations >= SPFWorkerSlot.retireAfter {
            retiring.append(worker)
            current = nil
            ensureWorker()
        }
        if retiring.contains(where: { $0 === worker }) { worker.closeIfIdle() }
        drain()
    }

    /// `worker` read enough of what it was sent to be handed more.
    func roomFreed(on worker: SPFWorkerConnection) {
        if worker === current { drain() }
    }

    // MARK: the worker process

    private func ensureWorker() {
        guard !stopped, current == nil, !starting, !retryScheduled else { return }
        let now = NIODeadline.now()
        if notBefore > now {
            retryScheduled = true
            loop.scheduleTask(deadline: notBefore) { [weak self] in
                guard let self else { return }
                self.retryScheduled = false
                self.ensureWorker()
            }
            return
        }
        start()
    }

    /// Starts a worker off the event loop (SPFProcesses.offLoop). The slot is `starting`
    /// until the worker's channel is attached.
    private func start() {
        starting = true
        let spawner = self.spawner, executable = self.executable, user = self.user
        processWork("a worker start", { try spawner.spawn(executable: executable, user: user) }) { [self] result in
            switch result {
            case .success(let spawned): attach(spawned)
            case .failure(let error):
                starting = false
                restarted(.spawnFailed, "cannot be started: \((error as? SPFSpawnError)?.description ?? "\(error)")", pid: nil, lost: 0)
            }
        }
    }

    private func attach(_ spawned: (fd: Int32, pid: pid_t)) {
        SPFProcesses.noteWorkersShareTheServersUser(logger)
        let worker = SPFWorkerConnection(pid: spawned.pid, slot: self)
        let hello = SPFWire.frame(.hello(receiver: receiver, maxQueries: maxQueries))
        operations += 1  // until the channel is attached or the process reaped
        ClientBootstrap(group: loop)
            // What the server holds for the worker: past the high mark it is handed nothing
            // more until it has read down to the low one (SPFWorkerConnection.writeBudget).
            .channelOption(.writeBufferWaterMark, value: .init(low: SPFWorkerConnection.writeBudget / 2, high: SPFWorkerConnection.writeBudget))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(SPFFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(worker)
                }
            }
            .withConnectedSocket(spawned.fd)
            .whenComplete { [self] result in
                defer { operationEnded() }
                switch result {
                case .success(let channel):
                    starting = false
                    worker.attach(channel, hello: hello)
                    if stopped {
                        worker.kill(.exited, "stopped")
                        return
                    }
                    current = worker
                    logger.debug("spf worker \(index) started: pid \(spawned.pid)")
                    drain()
                case .failure(let error):
                    // The channel owned the descriptor and closed it; closing it here again
                    // would close whatever the process opened under that number since.
                    let spawner = self.spawner
                    processWork("a worker's end", { spawner.killAndReap(spawned.pid) }) { [self] _ in
                        starting = false
                        restarted(.spawnFailed, "cannot be attached: \(error)", pid: spawned.pid, lost: 0)
                    }
                }
            }
    }

    // MARK: process work

    /// Process work under way (a start, a kill and reap), from its hand-off to the pool until
    /// its result has been dealt with on this loop.
    private var operations = 0
    private var settledWaiters: [EventLoopPromise<Void>] = []
    /// Process work that takes this long is logged (an error): the supervisor or the kernel
    /// does not answer, and SPF answers temperror meanwhile (10 s; Settings.slowProcessWork).
    let slowProcessWork: TimeAmount

    /// Runs `work` off the event loop (SPFProcesses.offLoop) and `then` with its result on
    /// it; counted in `operations`.
    func processWork<T: Sendable>(_ what: String, _ work: @escaping @Sendable () throws -> T,
                                  then: @escaping @Sendable (Result<T, any Error>) -> Void) {
        loop.assertInEventLoop()
        operations += 1
        let watch = loop.scheduleTask(in: slowProcessWork) { [logger, index, slowProcessWork] in
            logger.error("spf worker \(index): \(what) has taken over \(DurationText.format(slowProcessWork)) (the SPF supervisor or the kernel does not answer); SPF evaluations wait meanwhile")
        }
        SPFProcesses.offLoop(loop, work).whenComplete { [self] result in
            watch.cancel()
            then(result)
            operationEnded()
        }
    }

    private func operationEnded() {
        operations -= 1
        guard operations == 0 else { return }
        let waiters = settledWaiters
        settledWaiters.removeAll()
        for waiter in waiters { waiter.succeed() }
    }

    /// Succeeds once no process work is under way, or after `limit`: the server awaits this
    /// after `stop()` and before its event loops end, which must not happen while a result
    /// is still to come back to one of them.
    func settled(within limit: TimeAmount) -> EventLoopFuture<Void> {
        loop.assertInEventLoop()
        guard operations > 0 else { return loop.makeSucceededVoidFuture() }
        let promise = loop.makePromise(of: Void.self)
        settledWaiters.append(promise)
        loop.scheduleTask(in: limit) { [self] in
            guard let at = settledWaiters.firstIndex(where: { $0.futureResult === promise.futureResult }) else { return }
            settledWaiters.remove(at: at)
            logger.warning("spf worker \(index): stopping without waiting longer for process work under way")
            promise.succeed()
        }
        return promise.futureResult
    }

    /// A worker process ended; `status` is its wait status when known.
    func ended(_ worker: SPFWorkerConnection, status: Int32?, fault: (SPFRestartReason, String)?, lost: Int) {
        let wasRetiring = retiring.contains { $0 === worker }
        retiring.removeAll { $0 === worker }
        if worker === current { current = nil }
        load.add(-lost, ordering: .relaxed)
        if stopped { return }
        if wasRetiring && fault == nil {
            onRestart(.retired)
            logger.debug("spf worker \(index) (pid \(worker.pid)) retired after \(worker.evaluations) evaluations")
            return
        }
        let (reason, why) = fault ?? SPFWorkerSlot.describe(status)
        restarted(reason, why, pid: worker.pid, lost: lost)
    }

    /// How a process ended, from its wait status.
    static func describe(_ status: Int32?) -> (SPFRestartReason, String) {
        guard let (code, why) = SPFProcesses.describe(status) else { return (.crashed, "vanished") }
        guard let code else { return (.crashed, why) }
        if code == SPFWorkerProcess.exitCannotDropPrivileges { return (.exited, why + " (it could not switch to spf.worker_user)") }
        if code == SPFWorkerProcess.exitNoSandbox { return (.exited, why + " (it could not set its resource limits)") }
        return (.exited, why)
    }

    private func restarted(_ reason: SPFRestartReason, _ why: String, pid: pid_t?, lost: Int) {
        guard !stopped else { return }  // a start that failed or ended after stop(): not a restart
        failures += 1
        notBefore = .now() + SPFWorkerSlot.backoff(afterFailures: failures)
        onRestart(reason)
        let who = pid.map { " (pid \($0))" } ?? ""
        let during = lost > 0 ? " with \(lost) evaluation\(lost == 1 ? "" : "s") in flight (answered temperror)" : ""
        logger.warning("spf worker \(index)\(who) \(why)\(during); restarting (reason=\(reason.rawValue))")
        if !queue.isEmpty { ensureWorker() }
    }

    /// The one restart backoff: at once after a first failure, then 50 ms doubling up to 2 s.
    static func backoff(afterFailures failures: Int) -> TimeAmount {
        failures <= 1 ? .zero : .milliseconds(min(2_000, 50 << min(failures - 2, 6)))
    }

    /// Ends the worker and answers every evaluation still waiting.
    func stop() {
        loop.assertInEventLoop()
        stopped = true
        metrics.queueDepth.add(-queue.count)
        while let job = queue.popFirst() {
            job.timer?.cancel()
            reject(job, "SPF is stopping")
        }
        current?.kill(.exited, "stopped")
        for worker in retiring { worker.kill(.exited, "stopped") }
        current = nil
        retiring.removeAll()
    }
}
