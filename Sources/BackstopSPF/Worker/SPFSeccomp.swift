// The seccomp filter of a worker process: once it is installed the worker can read and
// write its socket (descriptor 0), manage its own memory, read the clock and exit. The
// calls that could reach anything outside (sockets, files, processes, signals to others)
// kill it; anything else fails with EPERM. x86_64 and aarch64 only: elsewhere the worker
// runs without a filter and says so. It does not set resource limits (SPFSandbox does).

import BackstopCore
import CSPF2
import Glibc

enum SPFSeccomp {
    struct Table {
        let arch: UInt32
        let read: UInt32
        let write: UInt32
        /// Memory, clocks, signals returning, futexes, exiting.
        let allowed: [UInt32]
        /// Sockets, files, processes, signals to others, credentials.
        let fatal: [UInt32]
    }

    static var table: Table? {
        #if arch(x86_64)
        return Table(
            arch: 0xC000_003E,  // AUDIT_ARCH_X86_64
            read: 0, write: 1,
            allowed: [3 /* close */, 5 /* fstat */, 9 /* mmap */, 10 /* mprotect */, 11 /* munmap */, 12 /* brk */,
                      13 /* rt_sigaction */, 14 /* rt_sigprocmask */, 15 /* rt_sigreturn */, 24 /* sched_yield */,
                      25 /* mremap */, 28 /* madvise */, 35 /* nanosleep */, 39 /* getpid */, 60 /* exit */,
                      96 /* gettimeofday */, 131 /* sigaltstack */, 186 /* gettid */, 201 /* time */, 202 /* futex */,
                      219 /* restart_syscall */, 228 /* clock_gettime */, 230 /* clock_nanosleep */, 231 /* exit_group */,
                      262 /* newfstatat */, 318 /* getrandom */],
            fatal: [2 /* open */, 41 /* socket */, 42 /* connect */, 43 /* accept */, 44 /* sendto */, 46 /* sendmsg */,
                    49 /* bind */, 50 /* listen */, 53 /* socketpair */, 56 /* clone */, 57 /* fork */, 58 /* vfork */,
                    59 /* execve */, 62 /* kill */, 85 /* creat */, 87 /* unlink */, 101 /* ptrace */, 105 /* setuid */,
                    106 /* setgid */, 200 /* tkill */, 234 /* tgkill */, 257 /* openat */, 288 /* accept4 */,
                    310 /* process_vm_readv */, 311 /* process_vm_writev */, 322 /* execveat */,
                    424 /* pidfd_send_signal */, 425 /* io_uring_setup */, 434 /* pidfd_open */, 435 /* clone3 */,
                    437 /* openat2 */])
        #elseif arch(arm64)
        return Table(
            arch: 0xC000_00B7,  // AUDIT_ARCH_AARCH64
            read: 63, write: 64,
            allowed: [57 /* close */, 79 /* newfstatat */, 80 /* fstat */, 98 /* futex */, 101 /* nanosleep */,
                      113 /* clock_gettime */, 115 /* clock_nanosleep */, 124 /* sched_yield */, 128 /* restart_syscall */,
                      132 /* sigaltstack */, 134 /* rt_sigaction */, 135 /* rt_sigprocmask */, 139 /* rt_sigreturn */,
                      169 /* gettimeofday */, 172 /* getpid */, 178 /* gettid */, 93 /* exit */, 94 /* exit_group */,
                      214 /* brk */, 215 /* munmap */, 216 /* mremap */, 222 /* mmap */, 226 /* mprotect */,
                      233 /* madvise */, 278 /* getrandom */],
            fatal: [35 /* unlinkat */, 56 /* openat */, 117 /* ptrace */, 129 /* kill */, 130 /* tkill */,
                    131 /* tgkill */, 144 /* setgid */, 146 /* setuid */, 198 /* socket */, 199 /* socketpair */,
                    200 /* bind */, 201 /* listen */, 202 /* accept */, 203 /* connect */, 206 /* sendto */,
                    211 /* sendmsg */, 220 /* clone */, 221 /* execve */, 242 /* accept4 */, 270 /* process_vm_readv */,
                    271 /* process_vm_writev */, 281 /* execveat */, 424 /* pidfd_send_signal */,
                    425 /* io_uring_setup */, 434 /* pidfd_open */, 435 /* clone3 */, 437 /* openat2 */])
        #else
        return nil
        #endif
    }

    static let retAllow: UInt32 = 0x7FFF_0000
    static let retKill: UInt32 = 0x8000_0000          // SECCOMP_RET_KILL_PROCESS
    static let retErrno: UInt32 = 0x0005_0000         // SECCOMP_RET_ERRNO | errno

    /// The filter program for `table`.
    static func program(_ t: Table) -> [sock_filter] {
        func stmt(_ code: UInt16, _ k: UInt32) -> sock_filter { sock_filter(code: code, jt: 0, jf: 0, k: k) }
        func jeq(_ k: UInt32, _ jt: Int, _ jf: Int) -> sock_filter {
            sock_filter(code: 0x15, jt: UInt8(jt), jf: UInt8(jf), k: k)  // BPF_JMP|BPF_JEQ|BPF_K
        }
        let load: UInt16 = 0x20  // BPF_LD|BPF_W|BPF_ABS
        let ret: UInt16 = 0x06   // BPF_RET|BPF_K
        var p: [sock_filter] = [
            stmt(load, 4),            // arch
            jeq(t.arch, 1, 0),
            stmt(ret, retKill),
            stmt(load, 0),            // syscall number
        ]
        // Layout after the checks: [errno] [allow] [kill] [fd check: 6 instructions].
        let checks = 2 + t.allowed.count + t.fatal.count
        let first = p.count
        let errnoAt = first + checks, allowAt = errnoAt + 1, killAt = allowAt + 1, fdCheckAt = killAt + 1
        func jump(to target: Int) -> Int { target - (p.count + 1) }
        p.append(jeq(t.read, jump(to: fdCheckAt), 0))
        p.append(jeq(t.write, jump(to: fdCheckAt), 0))
        for nr in t.allowed { p.append(jeq(nr, jump(to: allowAt), 0)) }
        for nr in t.fatal { p.append(jeq(nr, jump(to: killAt), 0)) }
        p.append(stmt(ret, retErrno | UInt32(EPERM)))
        p.append(stmt(ret, retAllow))
        p.append(stmt(ret, retKill))
        // read/write: only descriptor 0, the socket to the server (args[0], both halves).
        p.append(stmt(load, 16))
        p.append(jeq(0, 0, 3))
        p.append(stmt(load, 20))
        p.append(jeq(0, 0, 1))
        p.append(stmt(ret, retAllow))
        p.append(stmt(ret, retErrno | UInt32(EBADF)))
        return p
    }

    /// Installs the filter (and no_new_privs, which it needs).
    static func install() throws(SystemCallError) {
        guard let table else { throw SystemCallError(operation: "seccomp", detail: "no filter is written for this architecture") }
        guard backstop_set_no_new_privs() == 0 else { throw .lastError("prctl(PR_SET_NO_NEW_PRIVS)") }
        var filter = program(table)
        let status = filter.withUnsafeMutableBufferPointer { backstop_install_seccomp($0.baseAddress, UInt16($0.count)) }
        if status != 0 { throw .lastError("prctl(PR_SET_SECCOMP)") }
    }
}
