// Dropping root after the listeners are bound, and raising the open-file limit so
// max_connections can actually be reached. Nothing else in Backstop needs root.

import BackstopCore
import Foundation
import Logging

public enum Privileges {
    /// Switches to `user` (and `group`, or the user's primary group) when running as root.
    /// Throws when the switch is asked for and cannot be completed: never run as root by accident.
    public static func drop(user: String?, group: String?, logger: Logger) throws {
        guard user != nil || group != nil else {
            if geteuid() == 0 {
                logger.warning("running as root: set server.user (and server.group) so Backstop drops privileges after binding")
            }
            return
        }
        guard geteuid() == 0 else {
            logger.notice("not started as root, so server.user/server.group are not applied; running as uid \(geteuid())")
            return
        }
        var uid = getuid(), gid = getgid()
        var name = "root"
        if let user {
            guard let pw = getpwnam(user) else { throw ServerError("server.user: no such user \"\(user)\"") }
            uid = pw.pointee.pw_uid
            gid = pw.pointee.pw_gid
            name = user
        }
        if let group {
            guard let gr = getgrnam(group) else { throw ServerError("server.group: no such group \"\(group)\"") }
            gid = gr.pointee.gr_gid
        }
        // Supplementary groups are the user's own (as initgroups sets them), or just the group.
        let groups = user != nil ? PrivilegeSwitch.groups(of: name, primary: gid) : [gid]
        do { try PrivilegeSwitch.become(uid: uid, gid: gid, groups: groups) } catch {
            throw ServerError("cannot drop privileges to \(name): \(error)", errno: error.errno)
        }
        logger.notice("dropped privileges to uid=\(getuid()) gid=\(getgid())")
    }

    /// Raises the soft open-file limit to the hard limit; returns the new soft limit.
    @discardableResult
    public static func raiseFileLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(limit.rlim_cur)
    }
}
