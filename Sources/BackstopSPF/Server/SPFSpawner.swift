// Starting and ending worker processes. A worker gets a socketpair end as descriptor 0,
// /dev/null as 1 and 2, no other descriptor, an empty environment, its own process group
// and default signal handling. When the server will give up root (server.user), workers
// are started by a small supervisor process that keeps root for exactly this
// (SPFSupervisor), so each worker can still switch to spf.worker_user, a uid that is not
// the server's and so cannot signal it. Otherwise the server starts them itself. It knows
// nothing of the protocol spoken on the socket.

import BackstopCore
import CSPF2
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public struct SPFSpawnError: Error, Sendable, CustomStringConvertible {
    public let description: String
    /// errno of the system call that failed, when one did.
    public let errno: Int32?
    init(_ description: String, errno: Int32? = nil) {
        self.description = description + (errno.map { ": " + String(cString: strerror($0)) } ?? "")
        self.errno = errno
    }
}

/// How worker processes are started and ended.
public protocol SPFSpawner: Sendable {
    /// Starts `executable spf-worker`; the server's end of its socket and its pid.
    func spawn(executable: String, user: String) throws(SPFSpawnError) -> (fd: Int32, pid: pid_t)
    /// Kills the worker if it still runs and reaps it; its wait status, nil when unknown.
    func killAndReap(_ pid: pid_t) -> Int32?
}

public enum SPFProcesses {
    /// The spawner workers are started with: the supervisor once `startSupervisor` ran,
    /// else the server itself.
    public static var spawner: any SPFSpawner { current.withLockedValue { $0 } }
    private static let current = NIOLockedValueBox<any SPFSpawner>(DirectSpawner())

    /// The `backstop` binary whose `spf-worker` mode runs the workers; registered by the
    /// commands that evaluate SPF, or set by tests.
    public static var executable: String? {
        get { registered.withLockedValue { $0 } }
        set { registered.withLockedValue { $0 = newValue } }
    }
    private static let registered = NIOLockedValueBox<String?>(nil)

    private static let warnedSharedUser = NIOLockedValueBox(false)

    /// Runs process management (a spawn, which waits for the child's exec; a kill and reap;
    /// the supervisor's answer) on `processThreads`, never on an event loop, which also
    /// answers Postfix. The result comes back on `loop`.
    static func offLoop<T: Sendable>(_ loop: any EventLoop, _ work: @escaping @Sendable () throws -> T) -> EventLoopFuture<T> {
        processThreads.runIfActive(eventLoop: loop, work)
    }

    /// Two threads of their own, started at first use: a supervisor that does not answer
    /// holds these and stops only SPF's worker starts, not the table reloads and rate-limit
    /// saves of NIO's shared blocking pool.
    private static let processThreads: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        return pool
    }()

    /// Says once per process that workers run as the server's own user (not started as root).
    static func noteWorkersShareTheServersUser(_ logger: Logger) {
        guard geteuid() != 0, spawner is DirectSpawner, warnedSharedUser.withLockedValue({ w in defer { w = true }; return !w }) else { return }
        logger.warning("spf workers run as uid \(geteuid()), the server's own user: start backstop as root (with server.user) so they run as spf.worker_user")
    }

    /// Workers (and the supervisor) run this very binary: `/proc/self/exe`, which a child
    /// being spawned resolves to the binary its parent runs, even once the file at its path
    /// has been replaced (a package upgrade) or removed. By its path, a server still running
    /// after an upgrade would start workers of the new version, which may speak another
    /// protocol.
    public static let runningExecutable = "/proc/self/exe"

    /// Names another binary for the workers and the supervisor: only for running the server
    /// under a tool such as valgrind, whose own binary /proc/self/exe then is
    /// (bench/profile.sh sets it). Taken only when it is an absolute path to a regular,
    /// executable file owned by root or by this user that neither group nor others may write.
    public static let executableVariable = "BACKSTOP_SPF_WORKER_BINARY"

    /// Registers the binary workers run; returns a line for the log when the environment
    /// named one (taken or refused).
    @discardableResult
    public static func registerRunningExecutable() -> String? {
        var note: String?
        if let path = getenv(executableVariable).map({ String(cString: $0) }) {
            if let problem = unusableWorkerBinary(path) {
                note = "\(executableVariable) ignored: \(LogEscaping.escape(path)) \(problem); workers run /proc/self/exe"
            } else {
                executable = path
                return "\(executableVariable): SPF workers run \(LogEscaping.escape(path)) (for profiling only; it is looked up at every worker start)"
            }
        }
        if access(runningExecutable, X_OK) == 0 { executable = runningExecutable }
        return note
    }

    /// Why `path` may not be run as the workers' binary, or nil.
    static func unusableWorkerBinary(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "is not an absolute path" }
        var info = stat()
        guard stat(path, &info) == 0 else { return "cannot be read (\(String(cString: strerror(errno))))" }
        guard info.st_mode & S_IFMT == S_IFREG else { return "is not a regular file" }
        guard info.st_uid == 0 || info.st_uid == geteuid() else { return "is owned by uid \(info.st_uid), neither root nor this user" }
        guard info.st_mode & (S_IWGRP | S_IWOTH) == 0 else { return "is writable by its group or others" }
        guard access(path, X_OK) == 0 else { return "is not executable" }
        return nil
    }

    /// Starts the supervisor (while still root) so that workers can be started as
    /// `workerUser` (spf.worker_user) after the server drops root; it starts them as that
    /// user only. Call before dropping privileges.
    public static func startSupervisor(workerUser: String) throws(SPFSpawnError) {
        guard geteuid() == 0 else { return }
        guard let executable else { throw SPFSpawnError("no worker executable is registered") }
        let supervisor = try SupervisorSpawner.start(executable: executable, user: workerUser)
        current.withLockedValue { $0 = supervisor }
    }

    /// The user the supervisor starts workers as, once it runs.
    public static var supervisedWorkerUser: String? { (spawner as? SupervisorSpawner)?.user }

    /// Calls `handler` once, on a thread of its own, with why the supervisor ended, when it
    /// ends (at once if it has ended already). A server that gave up root cannot start
    /// another, so every worker start after that would fail.
    public static func onSupervisorExit(_ handler: @escaping @Sendable (String) -> Void) {
        let ended = supervisorWatch.withLockedValue { watch -> String? in
            watch.handler = handler
            return watch.ended
        }
        if let ended { handler(ended) }
    }

    static func supervisorExited(pid: pid_t, status: Int32?) {
        let why = "(pid \(pid)) " + (describe(status)?.why ?? "vanished")
        let handler = supervisorWatch.withLockedValue { watch in
            watch.ended = why
            return watch.handler
        }
        handler?(why)
    }

    private static let supervisorWatch = NIOLockedValueBox<(handler: (@Sendable (String) -> Void)?, ended: String?)>((nil, nil))

    /// Spawns `executable` with `arguments`; `socket` becomes descriptor 0 and 1, 2 are
    /// /dev/null (or inherited, with `inheritStandardError`). Returns the pid.
    static func spawn(_ executable: String, _ arguments: [String], socket: Int32,
                      inheritStandardError: Bool = false) throws(SPFSpawnError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, socket, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        if !inheritStandardError { posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) }
        // Everything else is closed (also descriptors without O_CLOEXEC): no listener or
        // client socket reaches the child.
        _ = backstop_spawn_close_from(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group (a Ctrl-C on the terminal is for the server, which stops its
        // workers), default signal handling, nothing blocked.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        posix_spawnattr_setpgroup(&attributes, 0)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        // Started from /proc/self/exe, it is still named as this process was (ps, top, the
        // journal show "/usr/sbin/backstop spf-worker …").
        let name = executable == runningExecutable ? (CommandLine.arguments.first ?? "backstop") : executable
        var argv: [UnsafeMutablePointer<CChar>?] = ([name] + arguments).map { strdup($0) } + [nil]
        var envp: [UnsafeMutablePointer<CChar>?] = [nil]  // an empty environment
        defer { for p in argv { free(p) } }
        var child: pid_t = 0
        let code = posix_spawn(&child, executable, &actions, &attributes, &argv, &envp)
        guard code == 0 else { throw SPFSpawnError("cannot run \(executable)", errno: code) }
        return child
    }

    /// A connected pair of stream sockets, close-on-exec.
    static func socketPair(_ type: Int32 = Int32(SOCK_STREAM.rawValue)) throws(SPFSpawnError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SPFSpawnError("socketpair", errno: errno)
        }
        return (fds[0], fds[1])
    }

    /// How a process ended, from its wait status: its exit code (nil when a signal ended
    /// it) and the words for a log line; nil when the status is unknown.
    static func describe(_ status: Int32?) -> (code: Int32?, why: String)? {
        guard let status else { return nil }
        let signal = status & 0x7F
        if signal != 0 { return (nil, "was killed by signal \(signal)") }
        let code = (status >> 8) & 0xFF
        return (code, "exited with status \(code)")
    }

    /// Waits for `pid` to end; its wait status, nil when it is not our child.
    static func reap(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return nil }
        }
        return status
    }
}

/// Workers started by the server process itself.
struct DirectSpawner: SPFSpawner {
    func spawn(executable: String, user: String) throws(SPFSpawnError) -> (fd: Int32, pid: pid_t) {
        let (mine, theirs) = try SPFProcesses.socketPair()
        defer { close(theirs) }
        do throws(SPFSpawnError) {
            let pid = try SPFProcesses.spawn(executable, ["spf-worker", "--user", user, "--parent", String(getpid())], socket: theirs)
            return (mine, pid)
        } catch {
            close(mine)
            throw error
        }
    }

    func killAndReap(_ pid: pid_t) -> Int32? {
        kill(pid, SIGKILL)
        return SPFProcesses.reap(pid)
    }
}
