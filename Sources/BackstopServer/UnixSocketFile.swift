// The file side of a Unix-socket listener: before binding, make sure the path is free
// (nothing there, or a socket nobody answers on) without ever deleting a live server's
// socket or a file that is not a socket; after binding, set mode and owner, and remember
// which file was created so stop removes only that one. Binding itself is NIO's.

import Foundation

enum UnixSocketFile {
    /// Makes `path` free for binding. A socket left by a server that died (connecting is
    /// refused) is removed; a socket where a server answers, or any other kind of file, is
    /// refused and left alone.
    static func claim(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if info.st_mode & S_IFMT != S_IFSOCK {
            throw ServerError("\(path) exists and is not a socket: remove it or choose another path")
        }
        switch probe(path) {
        case .answered:
            throw ServerError("unix:\(path) is in use by another server")
        case .nobody:
            if unlink(path) != 0 && errno != ENOENT {
                throw ServerError("cannot remove the stale socket \(path): \(String(cString: strerror(errno)))", errno: errno)
            }
        case .unknown(let reason):
            throw ServerError("cannot tell whether a server answers at unix:\(path) (\(reason)): remove the file if none does")
        }
    }

    enum Probe: Equatable { case answered, nobody, unknown(String) }

    /// Connects to `path` without blocking. A full backlog (EAGAIN) still means a live server.
    static func probe(_ path: String) -> Probe {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .unknown("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return .unknown("path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result == 0 { return .answered }
        switch errno {
        case EAGAIN, EINPROGRESS: return .answered
        case ECONNREFUSED, ENOENT: return .nobody
        default: return .unknown(String(cString: strerror(errno)))
        }
    }

    /// Device and inode of the file at `path`, to recognise it later.
    static func identity(_ path: String) -> (device: UInt64, inode: UInt64)? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    static func applyOwnership(path: String, mode: Int, owner: String?, group: String?) throws {
        guard chmod(path, mode_t(mode)) == 0 else {
            throw ServerError("cannot set mode \(String(mode, radix: 8)) on \(path): \(String(cString: strerror(errno)))", errno: errno)
        }
        var uid: uid_t = UInt32.max, gid: gid_t = UInt32.max
        if let owner {
            guard let pw = getpwnam(owner) else { throw ServerError("unknown user \"\(owner)\" for \(path)") }
            uid = pw.pointee.pw_uid
        }
        if let group {
            guard let gr = getgrnam(group) else { throw ServerError("unknown group \"\(group)\" for \(path)") }
            gid = gr.pointee.gr_gid
        }
        if owner != nil || group != nil, chown(path, uid, gid) != 0 {
            throw ServerError("cannot change owner of \(path): \(String(cString: strerror(errno)))", errno: errno)
        }
    }
}
