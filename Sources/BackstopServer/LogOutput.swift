// Log lines in key=value form to stderr, stdout or syslog. The level is shared by every
// logger and can change on reload. Message texts are already escaped by the caller where
// they hold outside data; metadata values are escaped here. When systemd's journal reads
// the stream (JOURNAL_STREAM names it), each line starts with its sd-daemon(3) priority
// `<N>`, so `journalctl -p warning` works. Libraries' own chatter (postgres-nio's
// connection messages) is logged at debug, under the label LogLabels.library. The lines
// are written by LogWriter's thread, never on the caller's (an event loop's) thread.

import Foundation
import Logging
import BackstopCore
import Synchronization

public final class LogOutput: Sendable {
    public static let shared = LogOutput()

    private let levelValue = Atomic<Int>(Logger.Level.info.rank)
    private let destinationValue = Atomic<Int>(0)
    /// Whether the journal reads stderr (bit 0) and stdout (bit 1), per JOURNAL_STREAM.
    private let journalStreams = Atomic<Int>(LogOutput.journalStreams())

    /// The descriptors among stdout and stderr that JOURNAL_STREAM ("device:inode") names.
    static func journalStreams(_ value: String? = ProcessInfo.processInfo.environment["JOURNAL_STREAM"]) -> Int {
        guard let value, let colon = value.firstIndex(of: ":"),
              let device = UInt64(value[..<colon]), let inode = UInt64(value[value.index(after: colon)...]) else { return 0 }
        var bits = 0
        for (fd, bit) in [(Int32(2), 1), (Int32(1), 2)] {
            var info = stat()
            if fstat(fd, &info) == 0, UInt64(info.st_dev) == device, UInt64(info.st_ino) == inode { bits |= bit }
        }
        return bits
    }

    /// syslog(3) priority of a level; also the journal's `<N>`.
    static func priority(_ level: Logger.Level) -> Int32 {
        switch level {
        case .trace, .debug: LOG_DEBUG
        case .info: LOG_INFO
        case .notice: LOG_NOTICE
        case .warning: LOG_WARNING
        case .error: LOG_ERR
        case .critical: LOG_CRIT
        }
    }

    /// Read for every line a logger might write (swift-log asks the handler's level first).
    public var level: Logger.Level {
        get { Logger.Level(rank: levelValue.load(ordering: .relaxed)) }
    }

    public func configure(_ settings: LogSettings) {
        levelValue.store(Logger.Level(rawValue: settings.level)?.rank ?? Logger.Level.info.rank,
                         ordering: .relaxed)
        let destination: Int
        switch settings.destination {
        case .stderr: destination = 0
        case .stdout: destination = 1
        case .syslog:
            destination = 2
            openlog("backstop", LOG_PID | LOG_NDELAY, LOG_MAIL)
        }
        destinationValue.store(destination, ordering: .relaxed)
    }

    public func setLevel(_ level: Logger.Level) { levelValue.store(level.rank, ordering: .relaxed) }

    func isEnabled(_ level: Logger.Level) -> Bool { level.rank >= levelValue.load(ordering: .relaxed) }

    func write(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) {
        var line = message
        if !metadata.isEmpty {
            for key in metadata.keys.sorted() {
                line += " \(key)=\(LogEscaping.field("\(metadata[key]!)"))"
            }
        }
        writer.enqueue(formatted(level: level, line))
    }

    /// The line as its destination takes it: for syslog the bare text (syslog adds the
    /// rest), for a stream the time stamp, or the journal's priority prefix, and a newline.
    private func formatted(level: Logger.Level, _ line: String) -> LogWriter.Line {
        switch destinationValue.load(ordering: .relaxed) {
        case 2:
            return LogWriter.Line(fd: -1, priority: Self.priority(level), text: line)
        default:
            let fd: Int32 = destinationValue.load(ordering: .relaxed) == 1 ? 1 : 2
            let journal = journalStreams.load(ordering: .relaxed) & (fd == 2 ? 1 : 2) != 0
            // The journal keeps its own time stamp; it takes the priority from the prefix.
            let text = journal ? "<\(Self.priority(level))>\(level.name) \(line)\n" : "\(Self.timestamp()) \(level.name) \(line)\n"
            return LogWriter.Line(fd: fd, priority: Self.priority(level), text: text)
        }
    }

    /// Lines are written by the writer's thread: an event loop only queues them.
    private let writer: LogWriter

    init() {
        writer = LogWriter(sink: { lines, dropped in LogOutput.emitShared(lines, dropped) })
    }

    /// Descriptors where a failed write left a line without its newline. Only the writer's
    /// thread touches it (through `emit`).
    nonisolated(unsafe) private var cutInside: Set<Int32> = []

    private static func emitShared(_ lines: [LogWriter.Line], _ dropped: Int) -> Int {
        shared.emit(lines, dropped: dropped)
    }

    /// Writes a batch (on the writer's thread), after a warning for the lines dropped before
    /// it; returns how many lines could not be written (counted as dropped, reported next).
    func emit(_ lines: [LogWriter.Line], dropped: Int) -> Int {
        // Each line with the number of lines it stands for: the note of a drop stands for the
        // lines it counts, so if it cannot be written they are carried to the next batch.
        var batch = lines.map { ($0, 1) }
        if dropped > 0 {
            batch.insert((formatted(level: .warning, "\(dropped) log lines dropped: the log's reader did not keep up and "
                                    + "\(LogWriter.maxQueuedBytes >> 20) MiB of lines were waiting"), dropped), at: 0)
        }
        var lost = 0
        var pending: [UInt8] = []
        var ends: [(end: Int, weight: Int)] = []  // where each line in `pending` ends
        var pendingFD: Int32 = 2
        var failed: Set<Int32> = []  // descriptors that failed in this batch: not tried again
        func writeOut() {
            defer { pending.removeAll(keepingCapacity: true); ends.removeAll(keepingCapacity: true) }
            guard !pending.isEmpty else { return }
            // A line cut by an earlier failed write is ended first, so the next line stays whole.
            if !failed.contains(pendingFD), cutInside.contains(pendingFD) {
                if Self.writeAll([0x0A], to: pendingFD) == 1 { cutInside.remove(pendingFD) } else { failed.insert(pendingFD) }
            }
            let written = failed.contains(pendingFD) ? 0 : Self.writeAll(pending, to: pendingFD)
            guard written < pending.count else { return }
            failed.insert(pendingFD)
            // Lines written whole count as written; the rest, a cut one included, as dropped.
            let whole = ends.firstIndex { $0.end > written } ?? ends.count
            lost += ends[whole...].reduce(0) { $0 + $1.weight }
            if written > (whole == 0 ? 0 : ends[whole - 1].end) { cutInside.insert(pendingFD) }
        }
        for (line, weight) in batch {
            if line.fd < 0 {
                writeOut()
                Self.withCStringArgument(line.text) { vsyslog(line.priority, "%s", $0) }
                continue
            }
            if line.fd != pendingFD || pending.count >= 1 << 16 { writeOut() }
            pendingFD = line.fd
            pending.append(contentsOf: line.text.utf8)
            ends.append((pending.count, weight))
        }
        writeOut()
        return lost
    }

    /// Writes the octets, waiting (at most 1 s at a time) when the descriptor is
    /// non-blocking and full; returns how many were written (fewer when the reader is gone,
    /// stays full or the descriptor fails).
    static func writeAll(_ octets: [UInt8], to fd: Int32) -> Int {
        var offset = 0
        while offset < octets.count {
            let n = octets[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n > 0 { offset += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&ready, 1, 1_000) > 0 { continue }
            }
            break
        }
        return offset
    }

    /// Calls `body` with a va_list whose one argument is `text` as a C string, for a "%s"
    /// format (a Swift String passed as CVarArg would be an object, not characters).
    static func withCStringArgument<R>(_ text: String, _ body: (CVaListPointer) -> R) -> R {
        text.withCString { pointer in withVaList([pointer]) { body($0) } }
    }

    /// Writes out what is queued, for at most `LogWriter.exitFlushSeconds` (at exit).
    public func flush() { writer.flush(seconds: LogWriter.exitFlushSeconds) }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var tm = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &tm)
        let ms = now.tv_nsec / 1_000_000
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                      tm.tm_hour, tm.tm_min, tm.tm_sec, ms)
    }

    /// Started with stdin, stdout or stderr closed, the first files and sockets opened would
    /// take those numbers, and log lines would be written into them (a Postfix connection,
    /// say): each closed one is opened on /dev/null. Call first thing in main, before any
    /// descriptor is opened.
    public static func openClosedStandardDescriptors() {
        for fd in Int32(0)...2 where fcntl(fd, F_GETFD) == -1 && errno == EBADF {
            _ = open("/dev/null", O_RDWR)
        }
    }

    /// Installs this output as swift-log's backend. Call once at start.
    public static func bootstrap() {
        // A reader of stderr that is gone must cost log lines, not the process (NIO ignores
        // SIGPIPE too, but only once it opens its first socket).
        signal(SIGPIPE, SIG_IGN)
        LoggingSystem.bootstrap { label in KeyValueLogHandler(label: label, output: .shared) }
        // Whatever ends the process through exit() first writes out the queued lines.
        atexit { LogOutput.shared.flush() }
    }

    /// What a handler under `label` writes for an event at `level`: a library's messages
    /// below warning are demoted to debug.
    static func effectiveLevel(_ level: Logger.Level, label: String) -> Logger.Level {
        label == LogLabels.library && level < .warning ? .debug : level
    }
}

public struct KeyValueLogHandler: LogHandler {
    public let label: String
    let output: LogOutput
    public var metadata: Logger.Metadata = [:]

    public init(label: String, output: LogOutput) {
        self.label = label
        self.output = output
    }

    /// The level lives in LogOutput so a reload changes it for every logger at once.
    public var logLevel: Logger.Level {
        get { output.level }
        set { }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let level = LogOutput.effectiveLevel(event.level, label: label)
        guard output.isEnabled(level) else { return }
        var merged = self.metadata
        if let metadata = event.metadata { merged.merge(metadata) { $1 } }
        if let error = event.error { merged["error"] = "\(error)" }
        output.write(level: level, label: label, message: event.message.description, metadata: merged)
    }
}

extension Logger.Level {
    var rank: Int {
        switch self {
        case .trace: 0
        case .debug: 1
        case .info: 2
        case .notice: 3
        case .warning: 4
        case .error: 5
        case .critical: 6
        }
    }
    var name: String { rawValue }

    /// The level of `rank` (info for a rank no level has).
    init(rank: Int) {
        switch rank {
        case 0: self = .trace
        case 1: self = .debug
        case 3: self = .notice
        case 4: self = .warning
        case 5: self = .error
        case 6: self = .critical
        default: self = .info
        }
    }
}
