// Hot reload of the recipient tables with real files: in-place writes, editors that
// rename a new file over the old one, an explicit reload (what SIGHUP calls), broken
// edits and vanished files keeping the last good table while lookups keep answering.

import Foundation
import Logging
import NIOCore
import Testing
@testable import BackstopCore

@Suite struct RecipientsReloadTests {
    let logger = Logger(label: "test.recipients")

    func directory(_ dir: RecipientTableDirectory, interval: TimeAmount = .milliseconds(20)) throws -> RecipientDirectory {
        let watched = RecipientDirectory(source: RecipientTableSource(files: [dir.file("recipients")]),
                                         interval: interval, logger: logger)
        try watched.loadInitial()
        watched.startWatching()
        return watched
    }

    @Test func reloadsAfterAnInPlaceWrite() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir)
        #expect(watched.table?.lookup("bob@example.com") == .unknown)
        try dir.write("recipients", "alice@example.com OK\nbob@example.com OK\n")
        #expect(await recipientsEventually { watched.table?.lookup("bob@example.com") == .valid(file: dir.file("recipients"), line: 2) })
        #expect(watched.table?.lookup("alice@example.com") == .valid(file: dir.file("recipients"), line: 1))
    }

    @Test func reloadsAfterRenameReplace() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir)
        // Same size, new inode: only the inode tells the files apart.
        try dir.replace("recipients", "carol@example.com OK\n")
        #expect(await recipientsEventually { watched.table?.lookup("carol@example.com") == .valid(file: dir.file("recipients"), line: 1) })
        #expect(watched.table?.lookup("alice@example.com") == .unknown)
    }

    @Test func explicitReloadWithoutPolling() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir, interval: .zero)
        try dir.replace("recipients", "alice@example.com OK\ndave@example.com OK\n")
        #expect(watched.table?.lookup("dave@example.com") == .unknown)  // no polling
        guard case .loaded = watched.reload() else {
            Issue.record("reload did not load")
            return
        }
        #expect(watched.table?.entryCount == 3)  // two mailboxes and their domain
        #expect(watched.table?.lookup("dave@example.com") == .valid(file: dir.file("recipients"), line: 2))
        #expect(watched.reload() == .unchanged)
        if case .loaded = watched.reload(force: true) {} else { Issue.record("a forced reload did not load") }
    }

    /// SIGHUP reads a table again even when its files look unchanged (an edit that kept the
    /// size within the file system's time stamp tick, on a one-second file system, looks
    /// so), except one read in the last two seconds (a table the same reload added).
    @Test func aSignalReadsTheTableAgainUnlessJustRead() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir, interval: .zero)
        let first = try #require(watched.table)
        #expect(watched.reloadAtSignal().isEmpty)
        #expect(watched.table === first, "read less than two seconds ago: not read again")
        try await Task.sleep(for: .milliseconds(2_100))
        #expect(watched.reloadAtSignal().isEmpty)
        #expect(watched.table !== first, "files that look unchanged are read again at a signal")
    }

    @Test func brokenEditKeepsTheOldTableWhileLookupsContinue() async throws {
        let dir = try RecipientTableDirectory()
        var good = "alice@example.com OK\n"
        for i in 0..<5000 { good += "user\(i)@example.com OK\n" }
        try dir.write("recipients", good)
        let watched = try directory(dir, interval: .milliseconds(5))
        let check = RecipientsCheck(settings: RecipientsSettings(source: watched.source), directory: watched)

        // Hammer lookups from another thread while the file is broken and mended repeatedly.
        let stop = RecipientsTestFlag()
        let wrong = RecipientsTestFlag()
        let lookups = Thread {
            let known = recipientRequest("alice@example.com"), unknown = recipientRequest("nobody@example.com")
            while !stop.isSet {
                if check.verdict(for: known) != .noOpinion("known_recipient") { wrong.set() }
                // Deferred while the newest edit is broken, refused otherwise: never let through.
                let reason = check.verdict(for: unknown).reason
                if reason != "unknown_recipient" && reason != "unknown_recipient_table_broken" { wrong.set() }
            }
            stop.set()
        }
        lookups.start()
        for round in 0..<5 {
            // Written by rename, so the poller never sees a half-written file here.
            try dir.replace("recipients", good + "broken line without an at sign \(round)\n")
            if case .failed(let error) = watched.reload() {
                #expect(error.description.contains(dir.file("recipients") + ":5002: "))
            } else {
                Issue.record("the broken table was not refused")
            }
            try? await Task.sleep(nanoseconds: 20_000_000)
            try dir.replace("recipients", good + "extra\(round)@example.com OK\n")
            #expect(await recipientsEventually { watched.table?.lookup("extra\(round)@example.com") != .unknown })
        }
        stop.set()
        #expect(await recipientsEventually { lookups.isFinished })
        #expect(!wrong.isSet, "a lookup saw a missing or half-loaded table")
    }

    @Test func unknownRecipientsAreDeferredWhileTheNewestEditIsBroken() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir, interval: .zero)
        let check = RecipientsCheck(settings: RecipientsSettings(source: watched.source), directory: watched)
        #expect(check.verdict(for: recipientRequest("bob@example.com")).action == .reply(code: 550, enhanced: "5.1.1", text: "User unknown"))
        // The edit that adds bob is broken: bob (and anyone unknown) is deferred, not refused.
        try dir.replace("recipients", "alice@example.com OK\nbob@example.com OK\nbroken\n")
        if case .failed = watched.reload() {} else { Issue.record("the broken edit was loaded") }
        #expect(watched.newestEditFailed)
        let deferred = check.verdict(for: recipientRequest("bob@example.com"))
        #expect(deferred.action == RecipientsSettings.defaultBrokenTableAction && deferred.reason == "unknown_recipient_table_broken")
        #expect(check.verdict(for: recipientRequest("alice@example.com")) == .noOpinion("known_recipient"))
        // Mended: bob is known, and an unknown recipient is refused for good again.
        try dir.replace("recipients", "alice@example.com OK\nbob@example.com OK\n")
        if case .loaded = watched.reload() {} else { Issue.record("the mended edit was not loaded") }
        #expect(!watched.newestEditFailed)
        #expect(check.verdict(for: recipientRequest("bob@example.com")) == .noOpinion("known_recipient"))
        #expect(check.verdict(for: recipientRequest("carol@example.com")).reason == "unknown_recipient")
        // A vanished file is a broken edit too; putting the same version back ends it.
        let saved = try String(contentsOfFile: dir.file("recipients"), encoding: .utf8)
        try FileManager.default.removeItem(atPath: dir.file("recipients"))
        _ = watched.reload()
        #expect(check.verdict(for: recipientRequest("carol@example.com")).reason == "unknown_recipient_table_broken")
        try dir.replace("recipients", saved)
        _ = watched.reload()
        #expect(check.verdict(for: recipientRequest("carol@example.com")).reason == "unknown_recipient")
    }

    @Test func brokenTableActionMustBeTemporary() throws {
        #expect(throws: ConfigError.self) {
            try Configuration.parse("[policy]\nrcpt = [\"recipients\"]\n[recipients]\nbroken_table_action = \"550 5.1.1 no\"\n", file: "t.toml")
        }
    }

    /// DEFER_IF_REJECT defers only when something after it in Postfix's restrictions
    /// rejects: as reject_action it let unknown recipients through, and as
    /// broken_table_action the recipients of a broken edit.
    @Test func actionsThatMustRefuseCannotBeDeferIfReject() throws {
        for key in ["reject_action", "broken_table_action"] {
            #expect {
                try Configuration.parse("[policy]\nrcpt = [\"recipients\"]\n[recipients]\n\(key) = \"DEFER_IF_REJECT 4.1.1 maybe\"\n", file: "t.toml")
            } throws: { error in "\(error)".contains(key) && "\(error)".contains("DEFER_IF_REJECT lets") || "\(error)".contains("must refuse temporarily") }
        }
        _ = try Configuration.parse("[policy]\nrcpt = [\"recipients\"]\n[recipients]\nreject_action = \"DEFER_IF_PERMIT 4.1.1 later\"\nbroken_table_action = \"DEFER_IF_PERMIT 4.1.1 later\"\n", file: "t.toml")
    }

    @Test func sighupReloadsThroughTheEngine() throws {
        // What the server does on SIGHUP: rebuild the engine with the running one as
        // `previous`, then call reload() on every ReloadableCheck.
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let path = try dir.write("backstop.toml", "[policy]\nrcpt = [\"recipients\"]\n[recipients]\nreload_interval = \"0s\"\n")
        let engine = try EngineBuilder.build(try Configuration.load(path: path), previous: nil, logger: logger)
        let check = try #require(engine.checks["recipients"] as? RecipientsCheck)
        try dir.replace("recipients", "alice@example.com OK\nbob@example.com OK\n")
        #expect(check.verdict(for: recipientRequest("bob@example.com")).reason == "unknown_recipient")  // no polling
        (engine.checks["recipients"] as? any ReloadableCheck)?.reload()
        #expect(check.verdict(for: recipientRequest("bob@example.com")) == .noOpinion("known_recipient"))

        // A configuration reload keeps the loaded table; reload() then picks up edits.
        try dir.replace("recipients", "alice@example.com OK\nbob@example.com OK\ncarol@example.com OK\n")
        let rebuilt = try EngineBuilder.build(try Configuration.load(path: path), previous: engine, logger: logger)
        let again = try #require(rebuilt.checks["recipients"] as? RecipientsCheck)
        #expect(again.directory === check.directory)
        #expect(again.verdict(for: recipientRequest("carol@example.com")).reason == "unknown_recipient")
        for check in rebuilt.checks.values { (check as? any ReloadableCheck)?.reload() }
        #expect(again.verdict(for: recipientRequest("carol@example.com")) == .noOpinion("known_recipient"))
        #expect(RecipientsCheck.reloadTables(in: rebuilt) == .unchanged)
    }

    @Test func vanishedFileKeepsTheLastGoodTable() async throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir)
        dir.remove("recipients")
        if case .failed(let error) = watched.reload() {
            #expect(error.description.contains("missing"))
        } else {
            Issue.record("a missing file was not reported")
        }
        try? await Task.sleep(nanoseconds: 100_000_000)
        #expect(watched.table?.lookup("alice@example.com") == .valid(file: dir.file("recipients"), line: 1))
        // It comes back: it is loaded again.
        try dir.write("recipients", "bob@example.com OK\n")
        #expect(await recipientsEventually { watched.table?.lookup("bob@example.com") == .valid(file: dir.file("recipients"), line: 1) })
    }

    /// A poll that finds the file gone waits one poll before it reports it: an editor that
    /// saves by renaming the old file away and writing a new one leaves such a moment.
    @Test func aFileGoneForOnePollIsNoFailure() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let watched = try directory(dir, interval: .zero)
        dir.remove("recipients")
        #expect(watched.poll() == .settling)
        #expect(!watched.newestEditFailed)
        try dir.write("recipients", "alice@example.com OK\nbob@example.com OK\n")
        #expect(watched.poll() == .settling)  // changed: loaded once it looks the same twice
        if case .loaded = watched.poll() {} else { Issue.record("the new version was not loaded") }
        #expect(!watched.newestEditFailed)
        // Gone at two polls in a row: that is reported.
        dir.remove("recipients")
        #expect(watched.poll() == .settling)
        guard case .failed(let error) = watched.poll() else { Issue.record("a file gone for two polls was not reported"); return }
        #expect(error.description.contains("is missing (No such file or directory)"), "\(error)")
        #expect(watched.newestEditFailed)
        #expect(watched.table?.lookup("bob@example.com") == .valid(file: dir.file("recipients"), line: 2))
    }

    @Test func startupWithAMissingOrBrokenTableFails() throws {
        let dir = try RecipientTableDirectory()
        let settings = RecipientsSettings(source: RecipientTableSource(files: [dir.file("recipients")]))
        #expect(throws: ConfigError.self) { try settings.makeCheck(CheckBuildContext(logger: logger)) }
        try dir.write("recipients", "alice@example.com OK\nbroken\n")
        #expect {
            try settings.makeCheck(CheckBuildContext(logger: logger))
        } throws: { "\($0)".contains(dir.file("recipients") + ":2: ") }
    }

    @Test func startWithoutTableAnswersTheFailActionUntilOneLoads() async throws {
        let dir = try RecipientTableDirectory()
        let settings = RecipientsSettings(source: RecipientTableSource(files: [dir.file("recipients")]),
                                          reloadInterval: .milliseconds(20), startWithoutTable: true,
                                          failAction: .deferTemporarily("4.3.0 recipient table not loaded"))
        let check = try #require(try settings.makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)
        #expect(check.verdict(for: recipientRequest("alice@example.com")).action == .deferTemporarily("4.3.0 recipient table not loaded"))
        try dir.write("recipients", "alice@example.com OK\n")
        #expect(await recipientsEventually { check.verdict(for: recipientRequest("alice@example.com")) == .noOpinion("known_recipient") })
    }

    @Test func aReloadToTablesThatDoNotLoadFailsEvenWithStartWithoutTable() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let running = try #require(try RecipientsSettings(source: RecipientTableSource(files: [dir.file("recipients")]),
                                                          reloadInterval: .zero, startWithoutTable: true)
            .makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)
        // The edit names a file that is not there: the reload fails, so the running check
        // (and its table) stays in force, instead of one with no table answering fail_action.
        let moved = RecipientsSettings(source: RecipientTableSource(files: [dir.file("recipients.new")]),
                                       reloadInterval: .zero, startWithoutTable: true)
        #expect(throws: ConfigError.self) { try moved.makeCheck(CheckBuildContext(logger: logger, previous: running)) }
        #expect(running.verdict(for: recipientRequest("nobody@example.com")).action.isRefusal)
        // At a start, the same settings still start without a table.
        #expect(try moved.makeCheck(CheckBuildContext(logger: logger)) is RecipientsCheck)
    }

    @Test func configReloadReusesTheLoadedTable() throws {
        let dir = try RecipientTableDirectory()
        try dir.write("recipients", "alice@example.com OK\n")
        let source = RecipientTableSource(files: [dir.file("recipients")])
        let first = try #require(try RecipientsSettings(source: source, reloadInterval: .zero)
            .makeCheck(CheckBuildContext(logger: logger)) as? RecipientsCheck)
        let table = first.directory.table
        // Other answer, same files: same directory and snapshot.
        let second = try #require(try RecipientsSettings(source: source, rejectAction: .reject("no"), reloadInterval: .zero)
            .makeCheck(CheckBuildContext(logger: logger, previous: first)) as? RecipientsCheck)
        #expect(second.directory === first.directory)
        #expect(second.directory.table === table)
        #expect(second.verdict(for: recipientRequest("x@example.com")).action == .reject("no"))
        // Another file list: a new directory.
        try dir.write("more", "bob@example.com OK\n")
        let third = try #require(try RecipientsSettings(source: RecipientTableSource(files: [dir.file("recipients"), dir.file("more")]),
                                                       reloadInterval: .zero)
            .makeCheck(CheckBuildContext(logger: logger, previous: second)) as? RecipientsCheck)
        #expect(third.directory !== first.directory)
        #expect(third.verdict(for: recipientRequest("bob@example.com")) == .noOpinion("known_recipient"))
    }
}

/// A flag set by one thread and read by another.
final class RecipientsTestFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}
