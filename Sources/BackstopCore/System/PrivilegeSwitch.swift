// The one place Backstop gives up root: used by the server after binding and by SPF worker
// processes before they touch libspf2. Sets groups, gid and uid in that order, then checks
// that the ids changed, that no other supplementary group remains, and that root cannot be
// regained. It decides nothing about which user to become.

import Foundation

public enum PrivilegeSwitch {
    /// Switches to `uid`/`gid` with exactly `groups` as supplementary groups, or throws what
    /// went wrong.
    public static func become(uid: uid_t, gid: gid_t, groups: [gid_t]) throws(SystemCallError) {
        var list = groups
        guard setgroups(list.count, &list) == 0 else { throw .lastError("setgroups") }
        guard setgid(gid) == 0 else { throw .lastError("setgid(\(gid))") }
        guard setuid(uid) == 0 else { throw .lastError("setuid(\(uid))") }
        guard getuid() == uid, geteuid() == uid, getgid() == gid, getegid() == gid else {
            throw SystemCallError(operation: "switch to uid \(uid)", detail: "ids did not change")
        }
        if uid != 0 {
            guard setuid(0) != 0, setgid(0) != 0 else {
                throw SystemCallError(operation: "switch to uid \(uid)", detail: "root could be regained")
            }
        }
        var held = [gid_t](repeating: 0, count: 256)
        let count = getgroups(Int32(held.count), &held)
        guard count >= 0, held[..<Int(count)].allSatisfy({ $0 == gid || groups.contains($0) }) else {
            throw SystemCallError(operation: "switch to uid \(uid)", detail: "supplementary groups remain")
        }
    }

    /// The supplementary groups `user` belongs to (as initgroups would set them), `gid` first.
    public static func groups(of user: String, primary gid: gid_t) -> [gid_t] {
        var count: Int32 = 64
        var list = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(user, gid, &list, &count) < 0 {
            list = [gid_t](repeating: 0, count: Int(count))
            guard getgrouplist(user, gid, &list, &count) >= 0 else { return [gid] }
        }
        return Array(list[..<Int(count)])
    }
}
