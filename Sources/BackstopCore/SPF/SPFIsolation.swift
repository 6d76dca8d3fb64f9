// Process isolation for libspf2 (spf.isolation = "process"). libspf2 is C, fed by the
// attacker's DNS; here it runs in child processes (`backstop spf-worker`) so a crash or
// hang inside it costs one SPF answer (temperror), never the server.
//
// Parent side, SPFWorkerSlot: one per `workers` slot, driven by that slot's thread with
// blocking I/O and poll() timeouts over a socketpair that is the child's stdin and stdout.
// It spawns lazily (the first evaluation, so after `serve` has dropped root), kills a child
// that misses the deadline, notices a dead one, answers temperror for the evaluation that
// was lost, and respawns with a backoff so a crash loop cannot spin.
//
// Child side, SPFWorkerProcess: closes inherited descriptors, dies with its parent
// (PR_SET_DEATHSIG), drops root to `worker_user`, then runs the very same Worker (its own
// libspf2 server, DNS client and DNS cache) on each request frame until stdin closes.
//
// Wire: frames of a 4-byte big-endian length and JSON. The first frame to the child is the
// verifier's Settings; then request (query + time budget) / response (outcome) pairs.
// Nothing here decides SPF results: that is Worker's job, on either side of the pipe.

import Foundation
import Glibc
import Logging
import Metrics
import NIOCore

// MARK: wire

/// The verifier settings a worker process needs, as they cross the pipe (TimeAmount is not Codable).
struct SPFWorkerSettings: Codable {
    var resolvers: [String]
    var dnsTimeoutNanoseconds: Int64
    var evaluationDeadlineNanoseconds: Int64
    var dnsCacheSize: Int
    var receiver: String
    var maxQueries: Int
    var workerUser: String

    init(_ settings: SPFVerifier.Settings) {
        resolvers = settings.resolvers.map { $0.host.contains(":") ? "[\($0.host)]:\($0.port)" : "\($0.host):\($0.port)" }
        dnsTimeoutNanoseconds = settings.dnsTimeout.nanoseconds
        evaluationDeadlineNanoseconds = settings.evaluationDeadline.nanoseconds
        dnsCacheSize = settings.dnsCacheSize
        receiver = settings.receiver
        maxQueries = settings.maxQueries
        workerUser = settings.workerUser
    }

    var settings: SPFVerifier.Settings {
        var s = SPFVerifier.Settings()
        s.resolvers = resolvers.compactMap(DNSResolverAddress.init)
        s.dnsTimeout = .nanoseconds(dnsTimeoutNanoseconds)
        s.evaluationDeadline = .nanoseconds(evaluationDeadlineNanoseconds)
        s.dnsCacheSize = dnsCacheSize
        s.receiver = receiver
        s.maxQueries = maxQueries
        s.workerUser = workerUser
        s.workers = 1
        s.isolation = .thread
        return s
    }
}

struct SPFWorkerRequest: Codable {
    var query: SPFQuery
    /// Time the worker may spend; it answers temperror itself when this runs out.
    var budgetNanoseconds: Int64
}

struct SPFWorkerResponse: Codable {
    var outcome: SPFOutcome
    /// DNS queries this evaluation sent to the resolvers (for the parent's counters).
    var networkQueries: Int
}

/// Length-prefixed frames on a blocking descriptor, with optional deadlines (poll).
enum SPFFrame {
    /// Frames larger than this are a protocol error (an outcome is a few KiB at most).
    static let maxLength = 1 << 20

    enum ReadError: Error { case eof, timeout, tooLarge, failed(Int32) }

    static func write(_ fd: Int32, _ payload: [UInt8], deadline: NIODeadline? = nil) -> Bool {
        var bytes = withUnsafeBytes(of: UInt32(payload.count).bigEndian) { Array($0) }
        bytes += payload
        var offset = 0
        while offset < bytes.count {
            if let deadline, !wait(fd, Int16(POLLOUT), deadline: deadline) { return false }
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return false
            }
            offset += n
        }
        return true
    }

    static func read(_ fd: Int32, deadline: NIODeadline? = nil) -> Result<[UInt8], ReadError> {
        switch readExactly(fd, 4, deadline: deadline) {
        case .failure(let error): return .failure(error)
        case .success(let header):
            let length = header.reduce(0) { $0 << 8 | Int($1) }
            guard length <= maxLength else { return .failure(.tooLarge) }
            return readExactly(fd, length, deadline: deadline)
        }
    }

    private static func readExactly(_ fd: Int32, _ count: Int, deadline: NIODeadline?) -> Result<[UInt8], ReadError> {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            if let deadline, !wait(fd, Int16(POLLIN), deadline: deadline) { return .failure(.timeout) }
            let n = bytes[offset...].withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return .failure(.eof) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return .failure(.failed(errno))
            }
            offset += n
        }
        return .success(bytes)
    }

    /// Waits until `fd` is ready for `events` (or hung up); false when `deadline` passes first.
    static func wait(_ fd: Int32, _ events: Int16, deadline: NIODeadline) -> Bool {
        while true {
            let left = deadline - NIODeadline.now()
            if left <= .zero { return false }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ms = Int32(clamping: (left.nanoseconds + 999_999) / 1_000_000)
            let n = poll(&entry, 1, ms)
            if n > 0 { return true }
            if n < 0 && errno != EINTR { return true }  // let the read/write report the error
        }
    }
}

// MARK: parent side

/// One `workers` slot in process isolation: the child process it runs evaluations on.
/// Only the slot's own thread calls `evaluate` and `close`; `processID` may be read anywhere.
final class SPFWorkerSlot: @unchecked Sendable {
    enum RestartReason: String, CaseIterable, Sendable {
        /// Killed because it did not answer before the evaluation deadline.
        case timeout
        /// Died on a signal (a crash inside libspf2, or killed from outside).
        case crashed
        /// Exited on its own (it cannot start, cannot drop privileges, ...).
        case exited
        /// Sent something that is not a response frame; killed.
        case `protocol`
        /// posix_spawn failed.
        case spawnFailed = "spawn_failed"
    }

    let index: Int
    let executable: String
    let shared: SPFShared
    private let lock = NSLock()
    private var pid: pid_t?
    private var socket: Int32 = -1
    /// Failures since the last good answer; sets the respawn backoff.
    private var failures = 0
    private var notBefore = NIODeadline.uptimeNanoseconds(0)
    /// A worker was started and has since been lost (killed, crashed, exited).
    private var lost = false
    private let encoder = JSONEncoder()
    private let decoder = JSONDecoder()

    init(index: Int, executable: String, shared: SPFShared) {
        self.index = index
        self.executable = executable
        self.shared = shared
    }

    var processID: pid_t? { lock.withLock { pid } }

    func evaluate(_ query: SPFQuery, deadline: NIODeadline) -> SPFOutcome {
        let started = NIODeadline.now()
        var (outcome, networkQueries) = exchange(query, deadline: deadline)
        if outcome.elapsed == .zero { outcome.elapsed = NIODeadline.now() - started }
        // The child's own counters die with it: count here what Worker counts in thread mode.
        shared.evaluations.add(1)
        if networkQueries > 0 {
            shared.networkQueries.add(networkQueries)
            shared.metrics.dnsQueries.increment(by: Int64(networkQueries))
        }
        shared.metrics.evaluations[outcome.result]?.increment()
        shared.metrics.duration.recordNanoseconds(outcome.elapsed.nanoseconds)
        return outcome
    }

    /// After a worker was lost, starts its replacement while the slot is idle, so that the
    /// next evaluation does not wait for a process to start. The very first start stays
    /// lazy (the first evaluation), so it happens after `serve` has dropped root.
    func replaceLost() {
        guard lost, lock.withLock({ pid == nil }) else { return }
        _ = spawn(deadline: NIODeadline.now() + .seconds(5))
    }

    /// Kills the child (it may be in the middle of nothing or of a hang) and reaps it.
    func close() {
        guard let pid = lock.withLock({ self.pid }) else { return }
        kill(pid, SIGKILL)
        _ = reap(pid)
        forget()
    }

    private func exchange(_ query: SPFQuery, deadline: NIODeadline) -> (SPFOutcome, Int) {
        func temperror(_ problem: String) -> (SPFOutcome, Int) {
            (SPFOutcome(result: .temperror, query: query, problem: problem), 0)
        }
        if let pid = lock.withLock({ self.pid }), hasHungUp() {
            // Died while idle (or spoke unasked, which only a broken worker does): restart
            // now, so this evaluation does not pay for it.
            kill(pid, SIGKILL)
            restarted(pid, after: reap(pid), query: nil)
        }
        if pid == nil {
            if let problem = spawn(deadline: deadline) { return temperror(problem) }
        }
        guard let pid = lock.withLock({ self.pid }) else { return temperror("SPF worker is not running") }

        // The child's own deadline comes a little before ours, so that a slow DNS answer ends
        // as the child's temperror and the child is kept; only a wedged child is killed.
        let left = deadline - NIODeadline.now()
        let margin = min(TimeAmount.milliseconds(250), max(.milliseconds(10), .nanoseconds(left.nanoseconds / 10)))
        let budget = left - margin
        guard budget > .zero else { return temperror("SPF evaluation deadline expired") }
        guard let payload = try? encoder.encode(SPFWorkerRequest(query: query, budgetNanoseconds: budget.nanoseconds)) else {
            return temperror("cannot encode the SPF request")
        }
        guard SPFFrame.write(socket, Array(payload), deadline: deadline) else {
            kill(pid, SIGKILL)
            let problem = restarted(pid, after: reap(pid), query: query)
            return temperror(problem)
        }
        switch SPFFrame.read(socket, deadline: deadline) {
        case .success(let bytes):
            guard let response = try? decoder.decode(SPFWorkerResponse.self, from: Data(bytes)) else {
                kill(pid, SIGKILL)
                _ = reap(pid)
                return temperror(restart(pid, .protocol, "sent a malformed answer", query: query))
            }
            failures = 0
            var outcome = response.outcome
            outcome.query = query  // the parent's copy is the authority on what was asked
            return (outcome, response.networkQueries)
        case .failure(.timeout):
            kill(pid, SIGKILL)
            _ = reap(pid)
            _ = restart(pid, .timeout, "did not answer within the evaluation deadline", query: query)
            return temperror("SPF worker did not answer in time; restarted")
        case .failure(.tooLarge):
            kill(pid, SIGKILL)
            _ = reap(pid)
            return temperror(restart(pid, .protocol, "sent an oversized frame", query: query))
        case .failure:
            kill(pid, SIGKILL)  // a no-op on a dead child; makes sure a half-closed one goes
            return temperror(restarted(pid, after: reap(pid), query: query))
        }
    }

    /// True when the idle child's end is closed or has sent unasked-for bytes.
    private func hasHungUp() -> Bool {
        var entry = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// Records a child that ended by itself; returns the problem text for the outcome.
    @discardableResult
    private func restarted(_ pid: pid_t, after status: Int32?, query: SPFQuery?) -> String {
        guard let status else { return restart(pid, .crashed, "vanished", query: query) }
        let signal = status & 0x7f
        if signal != 0 {
            let name = strsignal(signal).map { String(cString: $0) } ?? "signal"
            return restart(pid, .crashed, "was killed by signal \(signal) (\(name))", query: query)
        }
        let code = (status >> 8) & 0xff
        var why = "exited with status \(code)"
        if code == SPFWorkerProcess.exitCannotDropPrivileges {
            why += " (it could not switch to worker_user \"\(shared.settings.workerUser)\": see its message on stderr)"
        }
        return restart(pid, .exited, why, query: query)
    }

    private func restart(_ pid: pid_t, _ reason: RestartReason, _ why: String, query: SPFQuery?) -> String {
        forget()
        lost = true
        failures += 1
        // First failure: respawn at once; then 50 ms, 100 ms, ... up to 2 s between attempts.
        let backoff = failures <= 1 ? TimeAmount.zero : .milliseconds(min(2_000, 50 << min(failures - 2, 6)))
        notBefore = NIODeadline.now() + backoff
        shared.workerRestarts.add(1)
        shared.metrics.workerRestarts[reason]?.increment()
        let during = query.map { " while evaluating domain=\(LogEscaping.field($0.domain)) client=\(LogEscaping.field($0.clientAddress))" } ?? " while idle"
        shared.logger.warning("spf worker \(index) (pid \(pid)) \(why)\(during); restarting (reason=\(reason.rawValue))")
        return "SPF worker \(why); restarted"
    }

    private func forget() {
        if socket >= 0 { Glibc.close(socket) }
        socket = -1
        lock.withLock { pid = nil }
    }

    /// Waits for `pid` to end (it has been killed or has closed its end); its wait status.
    private func reap(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return nil }
        }
        return status
    }

    /// Starts the child, after the backoff; nil on success, else the problem for the outcome.
    private func spawn(deadline: NIODeadline) -> String? {
        let now = NIODeadline.now()
        if notBefore > now {
            guard notBefore < deadline else { return "SPF worker is restarting after repeated failures" }
            let wait = notBefore - now
            usleep(UInt32(clamping: wait.nanoseconds / 1_000))
        }
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            return spawnFailed("socketpair: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 clears close-on-exec on 0 and 1; everything else is closed (descriptors
        // without O_CLOEXEC included), so no listener or client socket reaches the child.
        posix_spawn_file_actions_adddup2(&actions, fds[1], 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        if let closeFrom = SPFWorkerProcess.spawnCloseFrom { _ = closeFrom(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group (a Ctrl-C on the terminal is for Backstop, which then stops
        // its workers), default signal handling, nothing blocked.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        posix_spawnattr_setpgroup(&attributes, 0)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)

        let arguments = [executable, "spf-worker", "--parent", String(getpid())]
        let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var child: pid_t = 0
        let code = posix_spawn(&child, executable, &actions, &attributes, &argv, &envp)
        Glibc.close(fds[1])
        guard code == 0 else {
            Glibc.close(fds[0])
            return spawnFailed("cannot run \(executable) spf-worker: \(String(cString: strerror(code)))")
        }
        socket = fds[0]
        lock.withLock { pid = child }
        guard let frame = try? encoder.encode(SPFWorkerSettings(shared.settings)),
              SPFFrame.write(socket, Array(frame), deadline: deadline) else {
            kill(child, SIGKILL)
            return restarted(child, after: reap(child), query: nil)
        }
        shared.logger.debug("spf worker \(index) started: pid \(child)")
        return nil
    }

    private func spawnFailed(_ why: String) -> String {
        failures += 1
        notBefore = NIODeadline.now() + .milliseconds(min(2_000, 50 << min(failures, 6)))
        shared.workerRestarts.add(1)
        shared.metrics.workerRestarts[.spawnFailed]?.increment()
        shared.logger.error("spf worker \(index): \(why)")
        return "SPF worker cannot start"
    }
}

// MARK: child side

/// `backstop spf-worker`: the worker process. Returns the exit status.
public enum SPFWorkerProcess {
    /// Exit status when root cannot be dropped (the parent names it in its log).
    public static let exitCannotDropPrivileges: Int32 = 77

    typealias CloseFromAction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    typealias CloseRange = @convention(c) (UInt32, UInt32, Int32) -> Int32

    /// glibc 2.34+'s posix_spawn_file_actions_addclosefrom_np and close_range, and prctl,
    /// are not in Swift's Glibc module: looked up by name. prctl is variadic in C; called
    /// with five integer arguments, which is what the Linux x86_64 and arm64 ABIs pass it.
    static let spawnCloseFrom: CloseFromAction? = symbol("posix_spawn_file_actions_addclosefrom_np")
    static let prctl: Prctl? = symbol("prctl")
    static let closeRange: CloseRange? = symbol("close_range")

    private static func symbol<T>(_ name: String) -> T? {
        guard let handle = dlopen(nil, RTLD_NOW), let address = dlsym(handle, name) else { return nil }
        return unsafeBitCast(address, to: T.self)
    }

    private static let prSetDeathSignal: Int32 = 1  // PR_SET_PDEATHSIG

    /// Serves evaluations on stdin/stdout until stdin closes. `parent` is the pid that
    /// spawned it: if that process is already gone, there is nobody to answer.
    public static func run(parent: Int32) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        if let closeRange { _ = closeRange(3, UInt32.max, 0) }
        // The frames move to private descriptors; stdout becomes stderr, so that a stray
        // print (ours or a library's) cannot corrupt the protocol.
        let input = dup(0), output = dup(1)
        guard input > 2, output > 2 else { return 71 }
        dup2(2, 1)
        let null = open("/dev/null", O_RDONLY)
        if null >= 0 { dup2(null, 0); Glibc.close(null) }

        guard dieWithParent(parent) else { return 0 }
        guard case .success(let frame) = SPFFrame.read(input),
              let wire = try? JSONDecoder().decode(SPFWorkerSettings.self, from: Data(frame)) else { return 0 }
        if geteuid() == 0 {
            if let problem = dropPrivileges(to: wire.workerUser) {
                FileHandle.standardError.write(Data("backstop spf-worker: cannot switch to worker_user \"\(wire.workerUser)\": \(problem)\n".utf8))
                return exitCannotDropPrivileges
            }
            // A credential change clears the parent-death signal: set it again.
            guard dieWithParent(parent) else { return 0 }
        }

        let settings = wire.settings
        SPFVerifier.quietLibrary()
        let shared = SPFShared(client: DNSClient(resolvers: settings.resolvers),
                               cache: DNSCache(capacity: settings.dnsCacheSize), settings: settings,
                               logger: Logger(label: "backstop.spf-worker"))
        let worker = SPFVerifier.Worker(shared: shared)
        defer { worker.close() }
        let decoder = JSONDecoder()
        let encoder = JSONEncoder()
        while case .success(let bytes) = SPFFrame.read(input) {
            guard let request = try? decoder.decode(SPFWorkerRequest.self, from: Data(bytes)) else { return 65 }
            let before = shared.networkQueries.value
            let outcome = worker.evaluate(request.query, deadline: NIODeadline.now() + .nanoseconds(request.budgetNanoseconds))
            let response = SPFWorkerResponse(outcome: outcome, networkQueries: shared.networkQueries.value - before)
            guard let payload = try? encoder.encode(response), SPFFrame.write(output, Array(payload)) else { return 0 }
        }
        return 0
    }

    /// Asks for SIGKILL when the parent dies; false when it already has.
    private static func dieWithParent(_ parent: Int32) -> Bool {
        _ = prctl?(prSetDeathSignal, UInt(SIGKILL), 0, 0, 0)
        return getppid() == parent
    }

    /// Switches uid, gid and groups to `user` and checks that root cannot come back; nil on
    /// success, else what went wrong.
    static func dropPrivileges(to user: String) -> String? {
        guard let entry = getpwnam(user) else { return "no such user" }
        let uid = entry.pointee.pw_uid, gid = entry.pointee.pw_gid
        guard uid != 0 else { return "it is root" }
        return PrivilegeSwitch.become(uid: uid, gid: gid, groups: [gid])
    }
}
