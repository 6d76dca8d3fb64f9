// Whether the system knows a user or a group name, for the configuration's checks of the
// names it will switch to or hand files to (server.user/group, a listener's owner/group,
// spf.worker_user). Reentrant lookups: configurations are read on more than one thread.
// It resolves nothing for use; the code that switches or chowns looks the name up itself.

import Foundation

public enum SystemAccounts {
    public static func userExists(_ name: String) -> Bool {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        return getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0 && result != nil
    }

    public static func groupExists(_ name: String) -> Bool {
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 65_536)
        return getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0 && result != nil
    }
}
