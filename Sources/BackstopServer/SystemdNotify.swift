// Tells systemd how the server is doing (Type=notify in the unit): READY=1 once every
// listener is bound and privileges are dropped, RELOADING=1 … READY=1 around a SIGHUP
// reload, STOPPING=1 when a stop begins. Sends one datagram to the socket NOTIFY_SOCKET
// names, as sd_notify(3) does; without NOTIFY_SOCKET (not under systemd) it does nothing.
// It never fails the server: a message that cannot be sent is dropped.

import Foundation

public enum SystemdNotify {
    /// Sends `state` ("READY=1", …); returns whether a datagram went out.
    @discardableResult
    public static func send(_ state: String, socketPath: String? = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"]) -> Bool {
        guard let socketPath, !socketPath.isEmpty else { return false }
        // "@name" is an abstract socket (a leading NUL on the wire).
        var path = Array(socketPath.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        var address = sockaddr_un()
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (path.first == 0 ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { target in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), target, length) }
            }
        }
        return sent == message.count
    }

    /// RELOADING=1 with the monotonic time systemd asks for (systemd 253's Type=notify-reload).
    public static func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        send("RELOADING=1\nMONOTONIC_USEC=\(Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000)")
    }
}
