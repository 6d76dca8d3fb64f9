/* The only C that Swift sees, for BackstopSPF alone: libspf2's public headers in the order
 * they need, and the few Linux calls a worker's sandbox and its spawning need that Swift's
 * Glibc module does not offer (variadic prctl, seccomp's structures, closefrom, capset). */
#ifndef BACKSTOP_CSPF2_SHIM_H
#define BACKSTOP_CSPF2_SHIM_H
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/nameser.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <string.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <errno.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include <spf2/spf_dns_rr.h>
#include <spf2/spf_dns_cache.h>
#include <spf2/spf_dns_resolv.h>

/* libspf2 prints warnings, notices and debug text on stderr through these global
 * handlers; Backstop logs for itself. Set from C because Swift 6 refuses to assign
 * C global variables (shared mutable state). Errors (SPF_error_handler) are left alone. */
static inline void backstop_spf_silent_handler(const char *file, int line, const char *message) {
    (void)file; (void)line; (void)message;
}
static inline void backstop_spf_quiet(void) {
    SPF_warning_handler = backstop_spf_silent_handler;
    SPF_info_handler = backstop_spf_silent_handler;
    SPF_debug_handler = backstop_spf_silent_handler;
}

/* Asks for `sig` when the parent process ends. */
static inline int backstop_set_parent_death_signal(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL);
}

/* No new privileges (setuid binaries, file capabilities) for this process and its children. */
static inline int backstop_set_no_new_privs(void) {
    return prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL);
}

/* Keeps only the capabilities whose bits are set in `keep` (bit n = capability n): the
 * effective and permitted sets lose the others and the inheritable set is emptied; the
 * bounding set (what a program it starts may hold) loses them too where this process may
 * change it (CAP_SETPCAP; a systemd unit has usually limited it already). 0 on success. */
static inline int backstop_keep_capabilities(unsigned long long keep) {
    for (int cap = 0; cap < 64; cap++) {
        if ((keep >> cap) & 1ULL) continue;
        if (prctl(PR_CAPBSET_DROP, (unsigned long)cap, 0UL, 0UL, 0UL) != 0 && errno != EINVAL && errno != EPERM) return -1;
    }
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    for (int i = 0; i < 2; i++) {
        unsigned int mask = (unsigned int)(keep >> (32 * i));
        data[i].effective &= mask;
        data[i].permitted &= mask;
        data[i].inheritable = 0;
    }
    return (int)syscall(SYS_capset, &header, data);
}

/* Installs a seccomp filter of `count` instructions. */
static inline int backstop_install_seccomp(struct sock_filter *filter, unsigned short count) {
    struct sock_fprog program = { .len = count, .filter = filter };
    return prctl(PR_SET_SECCOMP, (unsigned long)SECCOMP_MODE_FILTER, (unsigned long)&program, 0UL, 0UL);
}

/* Closes every descriptor from `first` up. */
static inline int backstop_close_from(unsigned int first) {
#ifdef SYS_close_range
    return (int)syscall(SYS_close_range, first, ~0U, 0);
#else
    (void)first;
    return -1;
#endif
}

/* Lets posix_spawn close every descriptor from `first` up in the child (glibc 2.34+;
 * declared here because spawn.h declares it only for _GNU_SOURCE, which would change
 * structures other modules see). */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *, int);
#endif
static inline int backstop_spawn_close_from(posix_spawn_file_actions_t *actions, int first) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    return posix_spawn_file_actions_addclosefrom_np(actions, first);
#else
    (void)actions; (void)first;
    return -1;
#endif
}
/* Sends `len` octets and, when fd >= 0, a descriptor with them (SCM_RIGHTS). */
static inline ssize_t backstop_send_with_fd(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char bytes[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof(control.bytes);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

/* Receives up to `len` octets and at most one descriptor (*fd, else -1); close-on-exec.
 * Any further descriptors that came with it are closed, not left open unnoticed. */
static inline ssize_t backstop_recv_with_fd(int sock, void *buf, size_t len, int *fd) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union { char bytes[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof(control.bytes);
    *fd = -1;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int received;
            memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd < 0) *fd = received; else close(received);
        }
    }
    return n;
}
#endif
