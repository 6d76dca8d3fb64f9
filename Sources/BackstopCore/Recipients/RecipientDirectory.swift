// Keeps the current recipient table snapshot and replaces it when the files change:
// polls each file's device, inode, size, mtime and ctime (so editors that write a new
// file and rename it over the old one are noticed), and reloads on request (SIGHUP).
// A new snapshot is parsed completely on a background queue and swapped in at once;
// lookups see the old snapshot or the new one, never a mixture. A broken or vanished
// file is logged and the last good snapshot stays in force.
//
// Readers take a pthread read-write lock in read mode just to copy the snapshot reference.
// Readers never wait for each other; the writer holds the lock only for the pointer swap
// (never while parsing). An uncontended read lock is one atomic add and one atomic
// subtract on the lock word, the same kind of cache-line traffic as retaining the snapshot
// itself, which any scheme handing out a strong reference pays anyway; a lock-free scheme
// (atomic pointer plus deferred reclamation) would need swift-atomics or macOS 15's
// Synchronization, neither of which this package may use.

import Foundation
import Logging
import Metrics
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What one reload attempt did.
public enum RecipientReloadOutcome: Sendable, Equatable {
    /// A new snapshot is in force.
    case loaded(entries: Int, seconds: Double)
    /// The files have not changed since the snapshot in force was read.
    case unchanged
    /// The files changed but are still being written; the next poll looks again.
    case settling
    /// A file is missing or has errors; the previous snapshot (if any) stays in force.
    case failed(ConfigError)

    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.loaded(let a, _), .loaded(let b, _)): a == b
        case (.unchanged, .unchanged), (.settling, .settling): true
        case (.failed(let a), .failed(let b)): a.issues == b.issues
        default: false
        }
    }
}

/// The identity and version of one file as stat(2) reports it.
struct FileSignature: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var mtime: Int64
    var mtimeNanos: Int64
    var ctime: Int64
    var ctimeNanos: Int64

    static func of(_ path: String) -> FileSignature? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        #if canImport(Darwin)
        return FileSignature(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                             mtime: Int64(info.st_mtimespec.tv_sec), mtimeNanos: Int64(info.st_mtimespec.tv_nsec),
                             ctime: Int64(info.st_ctimespec.tv_sec), ctimeNanos: Int64(info.st_ctimespec.tv_nsec))
        #else
        return FileSignature(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                             mtime: Int64(info.st_mtim.tv_sec), mtimeNanos: Int64(info.st_mtim.tv_nsec),
                             ctime: Int64(info.st_ctim.tv_sec), ctimeNanos: Int64(info.st_ctim.tv_nsec))
        #endif
    }
}

/// The snapshot in force, behind a read-write lock that readers share.
final class TableSlot: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    private var table: RecipientTable?

    init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    var current: RecipientTable? {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return table
    }

    func replace(_ new: RecipientTable) {
        pthread_rwlock_wrlock(lock)
        let old = table
        table = new
        pthread_rwlock_unlock(lock)
        _ = old  // the old snapshot is released here, outside the lock
    }
}

public final class RecipientDirectory: @unchecked Sendable {
    public let source: RecipientTableSource
    /// How often the files are checked; zero turns polling off (reload() still works).
    public let interval: TimeAmount
    private let logger: Logger
    private let slot = TableSlot()
    /// Every reload, polled or requested, runs on this queue, one at a time.
    private let queue = DispatchQueue(label: "backstop.recipients.reload")
    private var timer: DispatchSourceTimer?

    // Touched only on `queue` (or in init before the queue is used).
    private var loadedSignatures: [FileSignature?] = []
    private var pendingSignatures: [FileSignature?]?
    private var failedSignatures: [FileSignature?]?
    private var reportedMissing: Set<String> = []

    private let mailboxGauge: Gauge
    private let catchAllGauge: Gauge
    private let domainGauge: Gauge
    private let reloadTimeGauge: Gauge
    private let failures: Counter

    public init(source: RecipientTableSource, interval: TimeAmount, logger: Logger) {
        self.source = source
        self.interval = interval
        self.logger = logger
        mailboxGauge = Gauge(label: "backstop_recipients_table_entries", dimensions: [("kind", "mailbox")])
        catchAllGauge = Gauge(label: "backstop_recipients_table_entries", dimensions: [("kind", "catch_all")])
        domainGauge = Gauge(label: "backstop_recipients_table_entries", dimensions: [("kind", "domain")])
        reloadTimeGauge = Gauge(label: "backstop_recipients_last_reload_timestamp_seconds")
        failures = Counter(label: "backstop_recipients_reload_failures_total")
    }

    deinit {
        timer?.cancel()
    }

    /// The snapshot in force, or nil when none could be loaded yet.
    public var table: RecipientTable? { slot.current }

    /// Puts an already loaded snapshot in force (benchmarks); watching still compares files.
    func adopt(_ table: RecipientTable) {
        slot.replace(table)
    }

    /// Loads the tables for the first time; throws every problem (file:line) so start-up
    /// and `check-config` can fail clearly.
    public func loadInitial() throws(ConfigError) {
        let outcome = queue.sync { loadWaitingForWriters(force: true, initial: true) }
        switch outcome {
        case .failed(let error): throw error
        case .settling:
            throw ConfigError(issues: source.files.map {
                ConfigIssue(file: $0, line: nil, key: "", message: "the recipient table kept changing while it was read: try again when it is written")
            })
        default: break
        }
    }

    /// Re-reads the files now if they changed since the snapshot in force was read (or
    /// always, with `force`), waiting for the result. This is what SIGHUP calls; call it
    /// off the event loops, since parsing a large table takes a moment.
    @discardableResult
    public func reload(force: Bool = false) -> RecipientReloadOutcome {
        queue.sync { loadWaitingForWriters(force: force, initial: false) }
    }

    /// Runs on `queue`: a load that found the files changing under it is retried for up to
    /// two seconds, so start-up and SIGHUP do not give up because a writer was busy.
    private func loadWaitingForWriters(force: Bool, initial: Bool) -> RecipientReloadOutcome {
        var outcome = load(force: force, settle: false, initial: initial)
        var attempts = 0
        while case .settling = outcome, attempts < 20 {
            attempts += 1
            usleep(100_000)
            outcome = load(force: force, settle: false, initial: initial)
        }
        return outcome
    }

    /// Starts polling the files every `interval` (nothing happens when it is zero).
    public func startWatching() {
        guard interval.nanoseconds > 0 else { return }
        queue.sync {
            guard timer == nil else { return }
            let source = DispatchSource.makeTimerSource(queue: queue)
            let nanos = Int(interval.nanoseconds)
            source.schedule(deadline: .now() + .nanoseconds(nanos), repeating: .nanoseconds(nanos),
                            leeway: .nanoseconds(max(nanos / 10, 1_000_000)))
            source.setEventHandler { [weak self] in
                _ = self?.load(force: false, settle: true)
            }
            source.resume()
            timer = source
        }
    }

    /// Stops polling; the snapshot in force stays.
    public func stopWatching() {
        queue.sync {
            timer?.cancel()
            timer = nil
        }
    }

    /// Runs on `queue`. With `settle`, a change is only loaded once the files looked the
    /// same at two polls in a row, so a table caught half-written by an editor that writes
    /// in place is not loaded.
    private func load(force: Bool, settle: Bool, initial: Bool = false) -> RecipientReloadOutcome {
        let signatures = source.files.map(FileSignature.of)
        var missing: [String] = []
        for (file, signature) in zip(source.files, signatures) where signature == nil { missing.append(file) }
        if !missing.isEmpty {
            let error = ConfigError(issues: missing.map {
                ConfigIssue(file: $0, line: nil, key: "", message: "the recipient table is missing (\(String(cString: strerror(ENOENT))))")
            })
            let new = Set(missing).subtracting(reportedMissing)
            if !initial && (!new.isEmpty || force) {
                for file in missing where force || new.contains(file) {
                    logger.warning("recipient table missing; the last good table stays in force",
                                   metadata: ["file": "\(file)"])
                }
                failures.increment()
            }
            reportedMissing = Set(missing)
            pendingSignatures = nil
            return .failed(error)
        }
        reportedMissing = []
        if !force && signatures == loadedSignatures && slot.current != nil {
            pendingSignatures = nil
            return .unchanged
        }
        if settle && signatures == failedSignatures { return .unchanged }  // polling: reported already
        if settle && signatures != pendingSignatures {
            pendingSignatures = signatures
            return .settling
        }
        pendingSignatures = nil
        let started = DispatchTime.now().uptimeNanoseconds
        do {
            let table = try source.load()
            // A file that changed while it was read may be half-written: try again later.
            let after = source.files.map(FileSignature.of)
            if after != signatures {
                pendingSignatures = after
                return .settling
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            slot.replace(table)
            loadedSignatures = signatures
            failedSignatures = nil
            mailboxGauge.record(table.addressCount)
            catchAllGauge.record(table.catchAllCount)
            domainGauge.record(table.domainCount)
            reloadTimeGauge.record(Date().timeIntervalSince1970)
            logger.info("recipient table loaded", metadata: [
                "files": "\(source.files.joined(separator: ","))", "addresses": "\(table.addressCount)",
                "catch_alls": "\(table.catchAllCount)", "domains": "\(table.domainCount)",
                "seconds": "\(String(format: "%.3f", seconds))",
            ])
            return .loaded(entries: table.entryCount, seconds: seconds)
        } catch {
            failedSignatures = signatures
            failures.increment()
            for issue in error.issues where !initial {  // at start-up the caller reports them
                logger.error("recipient table not loaded; the last good table stays in force: \(issue)")
            }
            return .failed(error)
        }
    }
}
