// The SPF supervisor: a small process the server starts while it is still root, that
// keeps root for one job only, starting worker processes (which then switch to
// spf.worker_user) and ending them on request. It speaks request/answer messages on a
// SOCK_SEQPACKET socket (descriptor 0): "spawn for user U" is answered with the pid and
// the server's end of the worker's socket (SCM_RIGHTS); "kill pid" with its wait status,
// for its own children only. When the server's end closes it kills its workers and exits.
// The server side (SupervisorSpawner) sends one request at a time. A supervisor that ends
// while the server runs is reported to the handler `SPFProcesses.onSupervisorExit` names
// (`backstop serve` stops with EX_OSERR, to be restarted); it is never started again here.

import BackstopCore
import CSPF2
import Foundation
import Glibc
import NIOConcurrencyHelpers

enum SupervisorMessage {
    static let spawn: UInt8 = 1
    static let kill: UInt8 = 2
    static let failed: UInt8 = 0xFF
    static let maxMessage = 512
}

/// The server's side: asks the supervisor, one request at a time.
final class SupervisorSpawner: SPFSpawner {
    private let socket: Int32
    /// The supervisor's process id.
    let pid: pid_t
    /// The one user it starts workers as.
    let user: String
    private let lock = NIOLock()

    private init(socket: Int32, pid: pid_t, user: String) {
        self.socket = socket
        self.pid = pid
        self.user = user
    }

    static func start(executable: String, user: String) throws(SPFSpawnError) -> SupervisorSpawner {
        let (mine, theirs) = try SPFProcesses.socketPair(Int32(SOCK_SEQPACKET.rawValue))
        // Started from a thread of its own, which then waits for its end: the supervisor asks
        // for SIGKILL when its parent ends, and Linux sends that when the *thread* that
        // started it ends, not the process. The server starts it from a Swift concurrency
        // thread, which the thread pool may end while the server runs. This thread also
        // tells the server of the supervisor's end at once (nothing can start another once
        // root is given up, so the server must not learn of it only when a worker next
        // needs replacing).
        let spawned = ConditionLock(value: false)
        let outcome = NIOLockedValueBox<Result<pid_t, SPFSpawnError>?>(nil)
        let waiter: @Sendable () -> Void = {
            let result: Result<pid_t, SPFSpawnError>
            do throws(SPFSpawnError) {
                result = .success(try SPFProcesses.spawn(executable, ["spf-supervisor", "--parent", String(getpid()), "--user", user],
                                                         socket: theirs, inheritStandardError: true))
            } catch {
                result = .failure(error)
            }
            outcome.withLockedValue { $0 = result }
            spawned.lock()
            spawned.unlock(withValue: true)
            guard case .success(let pid) = result else { return }
            SPFProcesses.supervisorExited(pid: pid, status: SPFProcesses.reap(pid))
        }
        do throws(SystemCallError) {
            try DetachedThread.start(waiter)
        } catch {
            close(mine)
            close(theirs)
            throw SPFSpawnError("cannot start the thread that starts the SPF supervisor", errno: error.errno)
        }
        spawned.lock(whenValue: true)
        spawned.unlock()
        close(theirs)
        switch outcome.withLockedValue({ $0! }) {
        case .success(let pid):
            return SupervisorSpawner(socket: mine, pid: pid, user: user)
        case .failure(let error):
            close(mine)
            throw error
        }
    }

    private func exchange(_ request: [UInt8]) throws(SPFSpawnError) -> (reply: [UInt8], fd: Int32) {
        lock.lock()
        defer { lock.unlock() }
        do {
            let sent = request.withUnsafeBytes { backstop_send_with_fd(socket, $0.baseAddress, $0.count, -1) }
            guard sent == request.count else { throw SPFSpawnError("the SPF supervisor is gone", errno: errno) }
            var reply = [UInt8](repeating: 0, count: SupervisorMessage.maxMessage)
            var fd: Int32 = -1
            var n: Int
            repeat {
                n = reply.withUnsafeMutableBytes { backstop_recv_with_fd(socket, $0.baseAddress, $0.count, &fd) }
            } while n < 0 && errno == EINTR
            guard n > 0 else {
                if fd >= 0 { close(fd) }
                throw SPFSpawnError("the SPF supervisor is gone", errno: n < 0 ? errno : nil)
            }
            return (Array(reply[..<n]), fd)
        }
    }

    /// Workers started through the supervisor run as the user it was started for, whatever
    /// `user` a later configuration names (SPFSettings warns of the difference on reload).
    func spawn(executable: String, user: String) throws(SPFSpawnError) -> (fd: Int32, pid: pid_t) {
        try spawn(as: self.user)
    }

    /// Asks for a worker that runs as `user`.
    func spawn(as user: String) throws(SPFSpawnError) -> (fd: Int32, pid: pid_t) {
        let (reply, fd) = try exchange([SupervisorMessage.spawn] + Array(user.utf8.prefix(255)))
        let started = reply.count == 5 && reply[0] == SupervisorMessage.spawn
        let pid = started ? reply[1...4].reduce(Int32(0)) { $0 << 8 | Int32($1) } : 0
        guard started, fd >= 0 else {
            if fd >= 0 { close(fd) }
            if started {
                // The worker runs but its socket did not arrive (this process at its descriptor
                // limit): the supervisor reaps only what it is asked to kill, so ask.
                _ = killAndReap(pid)
                throw SPFSpawnError("the SPF worker's socket did not arrive (too many open files?)")
            }
            let why = reply.count > 5 ? String(decoding: reply[5...], as: UTF8.self) : "no answer"
            throw SPFSpawnError("the SPF supervisor could not start a worker: \(why)")
        }
        return (fd, pid)
    }

    func killAndReap(_ pid: pid_t) -> Int32? {
        let p = UInt32(bitPattern: pid)
        guard let (reply, fd) = try? exchange([SupervisorMessage.kill, UInt8(p >> 24), UInt8(p >> 16 & 0xFF), UInt8(p >> 8 & 0xFF), UInt8(p & 0xFF)]) else {
            return nil
        }
        if fd >= 0 { close(fd) }
        guard reply.count == 5, reply[0] == SupervisorMessage.kill else { return nil }
        return reply[1...4].reduce(Int32(0)) { $0 << 8 | Int32($1) }
    }
}

/// `backstop spf-supervisor`: the supervisor process. Returns its exit status.
public enum SPFSupervisor {
    /// CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7).
    static let keptCapabilities: UInt64 = 1 << 5 | 1 << 6 | 1 << 7

    /// `user`: the one user it starts workers as; a request for another is refused, so a
    /// server taken over cannot have workers started as any user but that one.
    public static func run(parent: Int32, user: String) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        // Its end is the server's: it exits when the server's end of its socket closes (or
        // the server dies). A SIGTERM to the whole service (systemd's default KillMode, a
        // Ctrl-C in a terminal) must not end it first, while the server still answers and
        // would take its end for a fault.
        for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT] { signal(sig, SIG_IGN) }
        // Root for its one job only: switching a worker's user (the worker does it, with the
        // capabilities it starts with) and ending workers of another user. Whatever else the
        // server started with (reading its state as root, a drop-in's rights in Postfix's
        // spool for a Unix socket) goes. If the system refuses (a seccomp filter that denies
        // capset), it says so and goes on: workers still switch users, and without the
        // supervisor SPF would stop.
        if backstop_keep_capabilities(SPFSupervisor.keptCapabilities) != 0 {
            FileHandle.standardError.write(Data("backstop spf-supervisor: warning: cannot drop capabilities it does not need: \(String(cString: strerror(errno)))\n".utf8))
        }
        _ = backstop_close_from(3)
        guard SPFSandbox.dieWithParent(parent) else { return 0 }
        // The binary it runs, whatever is at its path now (see SPFProcesses.runningExecutable).
        let executable = SPFProcesses.runningExecutable
        var children = Set<pid_t>()
        var request = [UInt8](repeating: 0, count: SupervisorMessage.maxMessage)
        while true {
            var ignored: Int32 = -1
            let n = request.withUnsafeMutableBytes { backstop_recv_with_fd(0, $0.baseAddress, $0.count, &ignored) }
            if ignored >= 0 { close(ignored) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            var reply: [UInt8]
            var passed: Int32 = -1
            switch request[0] {
            case SupervisorMessage.spawn:
                let asked = String(decoding: request[1..<n], as: UTF8.self)
                do throws(SPFSpawnError) {
                    guard asked == user else { throw SPFSpawnError("it starts workers as \"\(user)\" only") }
                    let (mine, theirs) = try SPFProcesses.socketPair()
                    defer { close(theirs) }
                    let pid: pid_t
                    do throws(SPFSpawnError) {
                        pid = try SPFProcesses.spawn(executable, ["spf-worker", "--user", user, "--parent", String(getpid())], socket: theirs)
                    } catch {
                        close(mine)  // a failed start (EAGAIN at the process limit) keeps no descriptor
                        throw error
                    }
                    children.insert(pid)
                    let p = UInt32(bitPattern: pid)
                    reply = [SupervisorMessage.spawn, UInt8(p >> 24), UInt8(p >> 16 & 0xFF), UInt8(p >> 8 & 0xFF), UInt8(p & 0xFF)]
                    passed = mine
                } catch {
                    reply = [SupervisorMessage.failed, 0, 0, 0, 0] + Array(error.description.utf8.prefix(400))
                }
            case SupervisorMessage.kill where n == 5:
                let pid = request[1...4].reduce(Int32(0)) { $0 << 8 | Int32($1) }
                var status: Int32 = -1
                if children.remove(pid) != nil {
                    kill(pid, SIGKILL)
                    status = SPFProcesses.reap(pid) ?? -1
                }
                let s = UInt32(bitPattern: status)
                reply = [SupervisorMessage.kill, UInt8(s >> 24), UInt8(s >> 16 & 0xFF), UInt8(s >> 8 & 0xFF), UInt8(s & 0xFF)]
            default:
                reply = [SupervisorMessage.failed, 0, 0, 0, 0] + Array("unknown request".utf8)
            }
            _ = reply.withUnsafeBytes { backstop_send_with_fd(0, $0.baseAddress, $0.count, passed) }
            if passed >= 0 { close(passed) }
        }
        for pid in children {
            kill(pid, SIGKILL)
            _ = SPFProcesses.reap(pid)
        }
        return 0
    }

}
