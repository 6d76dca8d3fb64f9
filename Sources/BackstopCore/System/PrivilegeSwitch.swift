// The one place Backstop gives up root: used by the server after binding and by SPF worker
// processes before they touch libspf2. Sets groups, gid and uid in that order, then checks
// that the ids changed, that no other supplementary group remains, and that root cannot be
// regained. It decides nothing about which user to become.

import Foundation

public enum PrivilegeSwitch {
    /// Switches to `uid`/`gid` with exactly `groups` as supplementary groups; nil on
    /// success, else what went wrong.
    public static func become(uid: uid_t, gid: gid_t, groups: [gid_t]) -> String? {
        var list = groups
        guard setgroups(list.count, &list) == 0 else { return "setgroups: \(String(cString: strerror(errno)))" }
        guard setgid(gid) == 0 else { return "setgid(\(gid)): \(String(cString: strerror(errno)))" }
        guard setuid(uid) == 0 else { return "setuid(\(uid)): \(String(cString: strerror(errno)))" }
        guard getuid() == uid, geteuid() == uid, getgid() == gid, getegid() == gid else { return "ids did not change" }
        if uid != 0 {
            guard setuid(0) != 0, setgid(0) != 0 else { return "root could be regained" }
        }
        var held = [gid_t](repeating: 0, count: 256)
        let count = getgroups(Int32(held.count), &held)
        guard count >= 0, held[..<Int(count)].allSatisfy({ $0 == gid || groups.contains($0) }) else {
            return "supplementary groups remain"
        }
        return nil
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
