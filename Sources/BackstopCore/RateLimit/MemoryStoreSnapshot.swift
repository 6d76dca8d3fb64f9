// The memory store's counters as a file, so a restart or an upgrade keeps every key's state
// (`[ratelimit] state_file`). This file encodes, decodes and writes snapshots; the store
// decides what goes in and what a loaded snapshot means. A file from outside is hostile:
// decoding checks every length against the bytes present and the entry count against the
// store's capacity before allocating, and a checksum catches truncation and bit rot.
//
// Layout, integers big-endian:
//   "BKRL" 1                      magic and version (5 bytes)
//   salt0 salt1                   the store's hash salts (UInt64 each)
//   wall monotonic                the clocks at save time, nanoseconds (Int64 each)
//   count                         entries (UInt32)
//   count × { h0 h1 tat length name }   UInt64, UInt64, Int64, UInt16, `length` bytes (0: unnamed)
//   checksum                      FNV-1a 64 of everything before it

import Glibc

public struct MemoryStoreSnapshot: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var h0: UInt64
        public var h1: UInt64
        public var tat: Int64
        /// The key's bytes when the store named it (it used more than half its allowance).
        public var name: [UInt8]?
    }

    public var salt0: UInt64
    public var salt1: UInt64
    /// Wall-clock nanoseconds since the epoch when saved: the time that passed until the
    /// next start is taken from it.
    public var wallClock: Int64
    /// The store's monotonic clock when saved; TATs are on that time line.
    public var monotonic: Int64
    public var entries: [Entry]

    static let magic: [UInt8] = Array("BKRL".utf8) + [1]
    static let headerSize = 5 + 8 * 4 + 4
    static let entryFixedSize = 8 * 3 + 2
    /// Names longer than this are not kept (no key a rule builds from Postfix's attributes
    /// needs more: an address is at most 254 octets, a client name 255).
    public static let maxNameBytes = 1024

    /// The largest file a store of `maxKeys` keys with `maxNamed` named ones can write.
    public static func maxFileBytes(maxKeys: Int, maxNamed: Int) -> Int {
        headerSize + maxKeys * entryFixedSize + maxNamed * maxNameBytes + 8
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.headerSize + entries.count * (Self.entryFixedSize + 8) + 8)
        out += Self.magic
        for value in [salt0, salt1, UInt64(bitPattern: wallClock), UInt64(bitPattern: monotonic)] { Self.put(value, 8, &out) }
        Self.put(UInt64(entries.count), 4, &out)
        for entry in entries {
            Self.put(entry.h0, 8, &out)
            Self.put(entry.h1, 8, &out)
            Self.put(UInt64(bitPattern: entry.tat), 8, &out)
            let name = entry.name.flatMap { $0.count <= Self.maxNameBytes ? $0 : nil } ?? []
            Self.put(UInt64(name.count), 2, &out)
            out += name
        }
        Self.put(Self.checksum(out[...]), 8, &out)
        return out
    }

    public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Reads a snapshot; at most `maxEntries` entries are accepted.
    public static func decode(_ bytes: [UInt8], maxEntries: Int) -> Result<MemoryStoreSnapshot, DecodeError> {
        guard bytes.count >= headerSize + 8 else { return .failure(DecodeError(description: "too short (\(bytes.count) bytes)")) }
        guard Array(bytes[0..<5]) == magic else { return .failure(DecodeError(description: "not a Backstop rate-limit state file (version 1)")) }
        let body = bytes[..<(bytes.count - 8)]
        guard read(bytes, bytes.count - 8, 8) == checksum(body) else {
            return .failure(DecodeError(description: "checksum mismatch (truncated or damaged)"))
        }
        var at = 5
        func next(_ width: Int) -> UInt64? {
            guard at + width <= body.count else { return nil }
            defer { at += width }
            return read(bytes, at, width)
        }
        let salt0 = next(8)!, salt1 = next(8)!
        let wall = Int64(bitPattern: next(8)!), mono = Int64(bitPattern: next(8)!)
        let count = Int(next(4)!)
        guard count <= maxEntries else {
            return .failure(DecodeError(description: "\(count) entries, more than max_keys (\(maxEntries))"))
        }
        guard count <= (body.count - at) / entryFixedSize else {
            return .failure(DecodeError(description: "\(count) entries do not fit in \(bytes.count) bytes"))
        }
        var entries: [Entry] = []
        entries.reserveCapacity(count)
        for index in 0..<count {
            guard let h0 = next(8), let h1 = next(8), let tat = next(8), let length = next(2) else {
                return .failure(DecodeError(description: "entry \(index) is cut short"))
            }
            var name: [UInt8]?
            if length > 0 {
                guard length <= maxNameBytes, at + Int(length) <= body.count else {
                    return .failure(DecodeError(description: "entry \(index) has a name of \(length) bytes"))
                }
                name = Array(body[at..<(at + Int(length))])
                at += Int(length)
            }
            entries.append(Entry(h0: h0, h1: h1, tat: Int64(bitPattern: tat), name: name))
        }
        guard at == body.count else { return .failure(DecodeError(description: "\(body.count - at) bytes after the last entry")) }
        return .success(MemoryStoreSnapshot(salt0: salt0, salt1: salt1, wallClock: wall, monotonic: mono, entries: entries))
    }

    private static func put(_ value: UInt64, _ width: Int, _ out: inout [UInt8]) {
        for shift in stride(from: (width - 1) * 8, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    private static func read(_ bytes: [UInt8], _ at: Int, _ width: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<width { value = value << 8 | UInt64(bytes[at + i]) }
        return value
    }

    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt64 { FNV1a.hash(bytes) }

    /// Wall-clock nanoseconds since the epoch.
    public static func wallClockNow() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    /// Writes `bytes` to `path` whole or not at all: a new file beside it (mode 0600), flushed
    /// to disk, then renamed over the old one.
    public static func writeAtomically(_ bytes: [UInt8], to path: String) throws(FileReadError) {
        let temporary = path + ".new"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw writeError("cannot create \(temporary)", errno) }
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let code = errno
                close(fd)
                unlink(temporary)
                throw writeError("cannot write \(temporary)", code)
            }
            written += n
        }
        let synced = fsync(fd) == 0
        let code = errno
        close(fd)
        guard synced, rename(temporary, path) == 0 else {
            let failed = synced ? errno : code
            unlink(temporary)
            throw writeError(synced ? "cannot rename \(temporary) to \(path)" : "cannot flush \(temporary)", failed)
        }
    }

    private static func writeError(_ what: String, _ code: Int32) -> FileReadError {
        FileReadError(reason: "\(what): \(String(cString: strerror(code)))", errno: code)
    }
}
