// The one way Backstop reads a file an administrator names (configuration, recipient
// tables, password files, resolv.conf): it must be a regular file no larger than the
// caller's bound. A device, FIFO, socket or directory is refused at once, before a byte is
// read, so `/dev/zero` cannot fill memory and a FIFO cannot hang a reload. It does not
// parse anything and does not decide what a missing file means.

import Foundation

public struct FileReadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, without the path (callers put the path where their reports want
    /// it): "a FIFO, not a regular file", "open failed: No such file or directory".
    public let reason: String
    /// errno of the failing system call, or nil when the file itself is refused.
    public let errno: Int32?

    public var description: String { reason }
}

public enum RegularFile {
    /// The whole file at `path`, or why it cannot be had. The file is opened without
    /// blocking (a FIFO never waits for a writer), checked with fstat on the opened
    /// descriptor (no race between check and read), and read up to `maxBytes`.
    /// With `ownerOnly`, a file that its group or others may read or write is refused
    /// (secrets such as BATV keys).
    public static func read(_ path: String, maxBytes: Int, ownerOnly: Bool = false) throws(FileReadError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        if fd < 0 { throw systemError("open failed") }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) != 0 { throw systemError("fstat failed") }
        let kind = info.st_mode & S_IFMT
        if kind != S_IFREG {
            throw FileReadError(reason: "\(describe(kind)), not a regular file", errno: nil)
        }
        if ownerOnly, info.st_mode & 0o077 != 0 {
            throw FileReadError(reason: "may be read or written by its group or others (mode \(String(info.st_mode & 0o777, radix: 8))): it holds secrets, so chmod 600 it and chown it to the server's user", errno: nil)
        }
        if Int(info.st_size) > maxBytes { throw tooLarge(maxBytes) }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var filled = 0
        // A file that grows while it is read is read to the bound, not beyond it.
        while true {
            if filled == bytes.count {
                if bytes.count > maxBytes { throw tooLarge(maxBytes) }
                bytes.append(contentsOf: repeatElement(0, count: min(max(bytes.count, 4096), maxBytes + 1 - bytes.count)))
            }
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if n < 0 {
                if errno == EINTR { continue }
                throw systemError("read failed")
            }
            if n == 0 { break }
            filled += n
        }
        if filled > maxBytes { throw tooLarge(maxBytes) }
        bytes.removeSubrange(filled...)
        return bytes
    }

    static func describe(_ kind: mode_t) -> String {
        switch kind {
        case S_IFDIR: "a directory"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFIFO: "a FIFO"
        case S_IFSOCK: "a socket"
        case S_IFLNK: "a symbolic link"
        default: "not a plain file"
        }
    }

    private static func systemError(_ what: String) -> FileReadError {
        let code = errno
        return FileReadError(reason: "\(what): \(String(cString: strerror(code)))", errno: code)
    }

    private static func tooLarge(_ maxBytes: Int) -> FileReadError {
        let shown = maxBytes % (1 << 20) == 0 ? "\(maxBytes >> 20) MiB" : "\(maxBytes) bytes"
        return FileReadError(reason: "larger than \(shown), the most Backstop reads from such a file", errno: nil)
    }
}
