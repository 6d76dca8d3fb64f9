// Keeps the current snapshot of a table an administrator edits (the recipient table, a
// rate-limit rule's overrides) and replaces it when the files change: polls each file's
// device, inode, size, mtime and ctime (so editors that write a new file and rename it over
// the old one are noticed), and reloads on request (SIGHUP). A new snapshot is parsed
// completely off the server's event loops (on NIO's blocking thread pool when polled) and
// swapped in at once; lookups see the old snapshot or the new one, never a mixture. A broken
// or vanished file is logged and the last good snapshot stays in force.
// What a table holds and how it is parsed is its source's business (WatchedTableSource).
//
// Readers take a lock just long enough to copy the snapshot reference; loads run one at a
// time under a second lock that the request path never touches.

import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a watched table is made from: its files, how to load them, how to report it.
public protocol WatchedTableSource: Sendable {
    associatedtype Table: Sendable
    /// The files, read in order.
    var files: [String] { get }
    /// How logs and errors name the table: "recipient table".
    var noun: String { get }
    /// Said at notice when a good version loads after a broken edit.
    var recoveryMessage: String { get }
    /// Reads every file and builds one snapshot; throws every problem found (file:line).
    func load() throws(ConfigError) -> Table
    /// What the "loaded" log line says of a snapshot (its counts).
    func summary(_ table: Table) -> Logger.Metadata
    /// Records a snapshot's gauges; called only for the table in force (TableGauges).
    func recordGauges(_ table: Table)
    /// Counts loads that failed (a broken edit, a vanished file).
    func failureCounter() -> Counter
}

/// What one reload attempt did.
public enum TableReloadOutcome: Sendable, Equatable {
    /// A new snapshot is in force.
    case loaded(seconds: Double)
    /// The files have not changed since the snapshot in force was read.
    case unchanged
    /// The files changed but are still being written; the next poll looks again.
    case settling
    /// A file is missing or has errors; the previous snapshot (if any) stays in force.
    case failed(ConfigError)

    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.loaded, .loaded): true
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

public typealias RecipientReloadOutcome = TableReloadOutcome

/// Which watched table sets the gauges of each table (by its noun): the one in force. A
/// configuration reload builds and loads its new tables before it knows whether the rest
/// of the file is good, and a table a reload replaced may still poll until it is released;
/// neither may overwrite the gauges of the table that answers.
/// Tables are named by a number of their own, never reused (an ObjectIdentifier can be,
/// once its table is freed), and a table records its gauges under the same lock that says
/// whether it may, so one replaced mid-load cannot write after its successor took over.
enum TableGauges {
    static let owners = NIOLockedValueBox<[String: UInt64]>([:])
    static let nextToken = Atomic<UInt64>(1)

    /// Runs `record` if the table `token` sets the gauges of `noun`.
    static func record(noun: String, token: UInt64, _ record: () -> Void) {
        owners.withLockedValue { if $0[noun] == token { record() } }
    }
}

public final class WatchedTable<Source: WatchedTableSource>: Sendable {
    public let source: Source
    /// How often the files are checked; zero turns polling off (reload() still works).
    public let interval: TimeAmount
    private let logger: Logger
    /// The snapshot in force.
    private let current = NIOLockedValueBox<Source.Table?>(nil)
    /// What the loads know about the files; every load, polled or requested, holds it, so
    /// loads run one at a time.
    private let loads = NIOLockedValueBox(LoadState())
    private let watcher = NIOLockedValueBox<RepeatedTask?>(nil)
    /// True while the newest version of the files could not be loaded (broken or missing).
    private let editFailed = Atomic<Bool>(false)

    struct LoadState {
        var loadedSignatures: [FileSignature?] = []
        var pendingSignatures: [FileSignature?]?
        var failedSignatures: [FileSignature?]?
        var reportedMissing: Set<String> = []
        /// When the snapshot in force was read.
        var loadedAt: NIODeadline?
        /// Files a poll found gone, not yet reported: gone at the next poll too, they are.
        var vanishing: Set<String> = []
    }

    private let failures: Counter

    public init(source: Source, interval: TimeAmount, logger: Logger) {
        self.source = source
        self.interval = interval
        self.logger = logger
        failures = source.failureCounter()
    }

    deinit {
        watcher.withLockedValue { $0?.cancel() }
    }

    /// This table now answers (its engine is installed): from now on it, and no other
    /// table of its noun, sets the gauges, starting with those of the snapshot it holds.
    public func putInForce() {
        loads.withLockedValue { _ in
            TableGauges.owners.withLockedValue { owners in
                owners[source.noun] = token
                if let table { source.recordGauges(table) }
            }
        }
    }

    /// This table's name in TableGauges.
    private let token = TableGauges.nextToken.add(1, ordering: .relaxed).oldValue

    /// The snapshot in force, or nil when none could be loaded yet.
    public var table: Source.Table? { current.withLockedValue { $0 } }

    /// True while the newest edit of a table could not be loaded and an older version is in
    /// force; false again as soon as a good version loads (or the files are put back).
    public var newestEditFailed: Bool { editFailed.load(ordering: .relaxed) }

    /// Puts an already loaded snapshot in force (benchmarks); watching still compares files.
    func adopt(_ table: Source.Table) {
        replace(with: table)
    }

    private func replace(with table: Source.Table) {
        let old = current.withLockedValue { slot in
            defer { slot = table }
            return slot
        }
        _ = old  // the old snapshot is released here, outside the lock
    }

    /// Loads the tables for the first time; throws every problem (file:line) so start-up
    /// and `check-config` can fail clearly.
    public func loadInitial() throws(ConfigError) {
        let outcome = loads.withLockedValue { loadWaitingForWriters(&$0, force: true, initial: true) }
        switch outcome {
        case .failed(let error): throw error
        case .settling:
            throw ConfigError(issues: source.files.map {
                ConfigIssue(file: $0, line: nil, key: "", message: "the \(source.noun) kept changing while it was read: try again when it is written")
            })
        default: break
        }
    }

    /// Re-reads the files now if they changed since the snapshot in force was read (or
    /// always, with `force`), waiting for the result. This is what SIGHUP calls; call it
    /// off the event loops, since parsing a large table takes a moment.
    @discardableResult
    public func reload(force: Bool = false) -> TableReloadOutcome {
        loads.withLockedValue { loadWaitingForWriters(&$0, force: force, initial: false) }
    }

    /// SIGHUP (ReloadableCheck): reads the files again, changed or not (an edit that kept a
    /// file's size within its file system's time stamp tick looks unchanged), unless the
    /// snapshot in force was read in the last two seconds (by this very reload, for a table
    /// it added). Returns what keeps the newest version out of force: a broken edit, or
    /// files still being written after the two seconds loadWaitingForWriters waits.
    public func reloadAtSignal() -> [ConfigIssue] {
        let outcome = loads.withLockedValue { state in
            let force = state.loadedAt.map { NIODeadline.now() - $0 > .seconds(2) } ?? true
            return loadWaitingForWriters(&state, force: force, initial: false)
        }
        switch outcome {
        case .failed(let error):
            return error.issues
        case .settling:
            return source.files.map {
                ConfigIssue(file: $0, line: nil, key: "",
                            message: "the \(source.noun) was still being written after 2 s and is not loaded: the next poll, or a SIGHUP once it is written, loads it")
            }
        case .loaded, .unchanged:
            return []
        }
    }

    /// A load that found the files changing under it is retried for up to two seconds, so
    /// start-up and SIGHUP do not give up because a writer was busy.
    private func loadWaitingForWriters(_ state: inout LoadState, force: Bool, initial: Bool) -> TableReloadOutcome {
        var outcome = load(&state, force: force, settle: false, initial: initial)
        var attempts = 0
        while case .settling = outcome, attempts < 20 {
            attempts += 1
            usleep(100_000)
            outcome = load(&state, force: force, settle: false, initial: initial)
        }
        return outcome
    }

    /// Starts polling the files every `interval` (nothing happens when it is zero). The timer
    /// runs on an event loop of NIO's shared group and each poll on NIO's blocking thread
    /// pool, never on a server loop; the next poll is timed from the end of the last one.
    public func startWatching() {
        guard interval.nanoseconds > 0 else { return }
        let interval = self.interval
        watcher.withLockedValue { task in
            guard task == nil else { return }
            let loop = MultiThreadedEventLoopGroup.singleton.any()
            // Holds the directory weakly, so one no check uses any more is released and its
            // polling ends.
            task = loop.scheduleRepeatedAsyncTask(initialDelay: interval, delay: interval) { [weak self] repeated in
                guard let directory = self else {
                    repeated.cancel()
                    return loop.makeSucceededVoidFuture()
                }
                return NIOThreadPool.singleton.runIfActive(eventLoop: loop) { _ = directory.poll() }
            }
        }
    }

    /// What stays in force when a version cannot be loaded: the last good one, or none
    /// yet (a start with start_without_table).
    private var inForce: String { table == nil ? "no table is in force yet" : "the last good table stays in force" }

    /// One poll: what the timer of startWatching runs.
    func poll() -> TableReloadOutcome {
        loads.withLockedValue { load(&$0, force: false, settle: true) }
    }

    /// Stops polling; the snapshot in force stays.
    public func stopWatching() {
        watcher.withLockedValue { task in
            task?.cancel()
            task = nil
        }
    }

    /// After a failed edit, the newest version is in force again: logged once, at notice.
    private func noteRecovery(_ message: String) {
        if editFailed.exchange(false, ordering: .relaxed) {
            logger.notice("\(message)", metadata: ["files": "\(source.files.joined(separator: ","))"])
        }
    }

    /// Runs with `loads` held. With `settle`, a change is only loaded once the files looked
    /// the same at two polls in a row, so a table caught half-written by an editor that
    /// writes in place is not loaded.
    private func load(_ state: inout LoadState, force: Bool, settle: Bool, initial: Bool = false) -> TableReloadOutcome {
        let signatures = source.files.map(FileSignature.of)
        var missing: [String] = []
        for (file, signature) in zip(source.files, signatures) where signature == nil { missing.append(file) }
        if !missing.isEmpty {
            // Polling: an editor that saves by renaming the old file away and writing a new
            // one leaves a moment without it. Gone at the next poll too, it is reported.
            let new = Set(missing).subtracting(state.reportedMissing)
            if settle, !new.isEmpty, !new.isSubset(of: state.vanishing) {
                state.vanishing = new
                return .settling
            }
            state.vanishing = []
            // Why stat(2) failed: a directory the server may not search after dropping root
            // is no missing file.
            let reasons = missing.map { file -> String in
                var info = stat()
                let code = stat(file, &info) == 0 ? ENOENT : errno
                return code == ENOENT ? "is missing (\(String(cString: strerror(code))))" : "cannot be looked at (\(String(cString: strerror(code))))"
            }
            let error = ConfigError(issues: zip(missing, reasons).map {
                ConfigIssue(file: $0, line: nil, key: "", message: "the \(source.noun) \($1)")
            })
            if !initial && (!new.isEmpty || force) {
                for (file, reason) in zip(missing, reasons) where force || new.contains(file) {
                    logger.warning("\(source.noun) \(reason); \(inForce)",
                                   metadata: ["file": "\(file)"])
                }
                failures.increment()
            }
            state.reportedMissing = Set(missing)
            state.pendingSignatures = nil
            if !initial { editFailed.store(true, ordering: .relaxed) }
            return .failed(error)
        }
        state.reportedMissing = []
        state.vanishing = []
        if !force && signatures == state.loadedSignatures && self.table != nil {
            state.pendingSignatures = nil
            noteRecovery("the \(source.noun) is back to the version in force")
            return .unchanged
        }
        if settle && signatures == state.failedSignatures { return .unchanged }  // polling: reported already
        if settle && signatures != state.pendingSignatures {
            state.pendingSignatures = signatures
            return .settling
        }
        state.pendingSignatures = nil
        let started = NIODeadline.now()
        do {
            let table = try source.load()
            // A file that changed while it was read may be half-written: try again later.
            let after = source.files.map(FileSignature.of)
            if after != signatures {
                state.pendingSignatures = after
                return .settling
            }
            let seconds = Double((NIODeadline.now() - started).nanoseconds) / 1e9
            replace(with: table)
            state.loadedSignatures = signatures
            state.loadedAt = started
            state.failedSignatures = nil
            TableGauges.record(noun: source.noun, token: token) { source.recordGauges(table) }
            var metadata = source.summary(table)
            noteRecovery(source.recoveryMessage)
            metadata["files"] = "\(source.files.joined(separator: ","))"
            metadata["seconds"] = "\(String(format: "%.3f", seconds))"
            logger.info("\(source.noun) loaded", metadata: metadata)
            return .loaded(seconds: seconds)
        } catch {
            state.failedSignatures = signatures
            if !initial { editFailed.store(true, ordering: .relaxed) }
            failures.increment()
            for issue in error.issues where !initial {  // at start-up the caller reports them
                logger.error("\(source.noun) not loaded; \(inForce): \(issue)")
            }
            return .failed(error)
        }
    }
}
