// What a worker process gives up before it reads its first record: root (it becomes
// spf.worker_user), the death of its parent (it dies too), resources beyond fixed limits,
// and, last, every system call but its socket's reads and writes (SPFSeccomp). The limits
// are named here and listed in docs/security.md. It spawns nothing (SPFSpawner does).

import BackstopCore
import CSPF2
import Glibc

enum SPFSandbox {
    /// Address space a worker may map.
    static let addressSpace: rlim_t = 1 << 30
    /// CPU seconds over a worker's whole life (it is retired long before: SPFWorkerSlot).
    static let cpuSeconds: rlim_t = 600

    /// Switches to `user` when running as root.
    static func dropPrivileges(to user: String) throws(SystemCallError) {
        guard geteuid() == 0 else { return }
        guard let entry = getpwnam(user) else { throw SystemCallError(operation: "getpwnam(\(user))", detail: "no such user") }
        let uid = entry.pointee.pw_uid, gid = entry.pointee.pw_gid
        guard uid != 0 else { throw SystemCallError(operation: "switch to \(user)", detail: "\"\(user)\" is root") }
        try PrivilegeSwitch.become(uid: uid, gid: gid, groups: [gid])
    }

    /// Dies with SIGKILL when the parent ends; false when it already has.
    static func dieWithParent(_ parent: pid_t) -> Bool {
        _ = backstop_set_parent_death_signal(SIGKILL)
        return getppid() == parent
    }

    /// Caps memory, CPU time, descriptors, processes, file size and core dumps; throws for
    /// the first limit that could not be set.
    static func limitResources() throws(SystemCallError) {
        let limits: [(Int32, rlim_t, String)] = [
            (Int32(RLIMIT_AS.rawValue), addressSpace, "RLIMIT_AS"),
            (Int32(RLIMIT_CPU.rawValue), cpuSeconds, "RLIMIT_CPU"),
            (Int32(RLIMIT_NOFILE.rawValue), 3, "RLIMIT_NOFILE"),
            (Int32(__RLIMIT_NPROC.rawValue), 0, "RLIMIT_NPROC"),
            (Int32(RLIMIT_FSIZE.rawValue), 0, "RLIMIT_FSIZE"),
            (Int32(RLIMIT_CORE.rawValue), 0, "RLIMIT_CORE"),
        ]
        for (resource, value, name) in limits {
            var limit = rlimit(rlim_cur: value, rlim_max: value)
            if setrlimit(resource, &limit) != 0 { throw .lastError("setrlimit(\(name))") }
        }
    }
}
