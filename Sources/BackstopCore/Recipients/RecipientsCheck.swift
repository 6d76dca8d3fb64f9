// The recipients check: at RCPT TO, refuse recipients in our domains that the tables do
// not list (550 5.1.1 by default), so the message is never accepted and never bounced.
// Recipients in other domains, and empty recipients, get no opinion. Reading the
// [recipients] section is here too; the tables themselves are in RecipientTable*.swift.

import Foundation
import Logging
import Metrics
import NIOCore

public struct RecipientsSettings: CheckSettings {
    public static let defaultRejectText = "550 5.1.1 User unknown"

    public var source: RecipientTableSource
    public var rules: RecipientNormalisation
    /// The answer for an unknown recipient; "{recipient}" in its text becomes the address.
    public var rejectAction: PolicyAction
    public var reloadInterval: TimeAmount
    public static let defaultReloadInterval: TimeAmount = .seconds(5)
    /// Most files in `tables` (each entry keeps its file's index in 16 bits).
    public static let maxTables = 1_000
    public var startWithoutTable: Bool
    public var testMode: Bool
    /// The answer while no table has been loaded (only with start_without_table).
    public var failAction: PolicyAction
    /// The answer for an unknown recipient while the newest edit of a table failed to load:
    /// temporary, since that edit may be what adds the mailbox.
    public var brokenTableAction: PolicyAction
    /// `pass_srs`: a recipient whose local part starts with `SRS0=` or `SRS1=` (a Sender
    /// Rewriting Scheme address: a bounce of mail this host forwarded, which a service such as
    /// postsrsd decodes in Postfix's recipient_canonical_maps) gets no opinion when it is not
    /// in the table, instead of the unknown-recipient answer.
    public var passSRS = false
    /// Why an address not in the table is accepted all the same (the decision log's reason),
    /// or nil: `postmaster@` (RFC 5321 §4.5.1: every domain we receive mail for must accept
    /// it, and Postfix does so for its local domains by itself; a table that does not list
    /// it is not refusing it on purpose, an entry with its own answer would), and with
    /// `pass_srs` an SRS address (Postfix and the SRS service decide; a forged one is theirs
    /// to refuse).
    func acceptsUnlisted(_ address: UnsafeRawBufferPointer) -> String? {
        if RecipientsCheck.isPostmaster(address) { return "postmaster" }
        if passSRS && RecipientsCheck.isSRS(address) { return "srs_address" }
        return nil
    }

    public static let defaultBrokenTableAction = PolicyAction.reply(
        code: 450, enhanced: "4.1.1", text: "Recipient not known yet: the recipient table is being corrected, try again later")

    public init(source: RecipientTableSource, rules: RecipientNormalisation = RecipientNormalisation(),
                rejectAction: PolicyAction? = nil, reloadInterval: TimeAmount = defaultReloadInterval,
                startWithoutTable: Bool = false, testMode: Bool = false, failAction: PolicyAction = .dunno,
                brokenTableAction: PolicyAction = defaultBrokenTableAction) {
        self.source = source
        self.rules = rules
        self.rejectAction = rejectAction ?? (try! PolicyAction(parsing: Self.defaultRejectText))
        self.reloadInterval = reloadInterval
        self.startWithoutTable = startWithoutTable
        self.testMode = testMode
        self.failAction = failAction
        self.brokenTableAction = brokenTableAction
    }

    public init(reading section: ConfigSection, baseDirectory: String) {
        let tables = section.stringArray("tables", default: ["recipients"])
        if tables.isEmpty { section.report("tables", "list at least one table file, e.g. [\"recipients\"]") }
        if tables.count > Self.maxTables {
            section.report("tables", "\(tables.count) files: at most \(Self.maxTables) (concatenate some)")
        }
        let files = tables.prefix(Self.maxTables).map { $0.hasPrefix("/") || baseDirectory.isEmpty ? $0 : baseDirectory + "/" + $0 }
        let domains = section.stringArray("domains", default: [])
        for domain in domains where DomainName.asciiForm(domain) == nil || domain.utf8.contains(UInt8(ascii: "@")) || domain.isEmpty {
            section.report("domains", "\"\(LogEscaping.escape(domain))\" is not a domain name (write example.com, without @)")
        }
        // Defaults come from the settings' own initialisers.
        let normal = RecipientNormalisation()
        let d = RecipientsSettings(source: RecipientTableSource(files: []))
        let caseSensitive = section.bool("case_sensitive_local_part", default: normal.caseSensitiveLocalPart)
        let delimiter = section.string("recipient_delimiter", default: String(decoding: normal.recipientDelimiters, as: UTF8.self))
        if delimiter.utf8.contains(where: { $0 >= 0x80 || $0 <= 0x20 || $0 == UInt8(ascii: "@") || $0 == UInt8(ascii: "\"") }) {
            section.report("recipient_delimiter", "use ASCII punctuation such as \"+\" or \"+-\" (no @, quotes or blanks)")
        }
        let batv = section.bool("strip_batv", default: normal.stripBATV)
        let reject = section.action("reject_action", default: d.rejectAction)
        if !reject.isRefusal || reject.refusesOnlyIfLaterRejects {
            section.report("reject_action", "must refuse: use a 5NN or 4NN reply such as \"550 5.1.1 User unknown\", REJECT or DEFER (DEFER_IF_REJECT lets the mail through when nothing after it rejects)")
        }
        var interval = section.duration("reload_interval", default: Self.defaultReloadInterval)
        if interval.nanoseconds != 0 && (interval < .milliseconds(10) || interval > .hours(24)) {
            section.report("reload_interval", "use \"0s\" (no polling) or a duration from 10ms to 24h")
            interval = Self.defaultReloadInterval
        }
        let startWithout = section.bool("start_without_table", default: d.startWithoutTable)
        let testMode = section.bool("test_mode", default: d.testMode)
        let fail = section.action("fail_action", default: d.failAction)
        let broken = section.action("broken_table_action", default: d.brokenTableAction)
        if !broken.isRefusal || !broken.isTemporary || broken.refusesOnlyIfLaterRejects {
            section.report("broken_table_action", "must refuse temporarily (4NN or DEFER): the edit that failed may be what adds the mailbox")
        }
        let srs = section.bool("pass_srs", default: d.passSRS)
        self.init(source: RecipientTableSource(files: files, domains: domains, caseSensitiveLocalPart: caseSensitive),
                  rules: RecipientNormalisation(caseSensitiveLocalPart: caseSensitive, recipientDelimiter: delimiter,
                                                stripBATV: batv),
                  rejectAction: reject, reloadInterval: interval, startWithoutTable: startWithout,
                  testMode: testMode, failAction: fail, brokenTableAction: broken)
        passSRS = srs
    }

    /// The socketmap listener serves the table to Postfix (relay_recipient_maps) with or
    /// without a policy stage.
    public func usedOutsideStages(in configuration: Configuration) -> Bool {
        configuration.listeners.contains { $0.protocol == .socketmap }
    }

    /// Reads the tables once and throws what is wrong with them (file:line), whatever
    /// start_without_table says: for `backstop check-config`.
    public func validateTables() throws(ConfigError) {
        _ = try source.load()
    }

    public func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        // Same files and key rules as the running check: keep its snapshot and watcher.
        // Edits are picked up by the poller, or at once by reload() (ReloadableCheck),
        // which the server calls on every check after a configuration reload.
        if let previous = context.previous as? RecipientsCheck,
           previous.directory.source == source, previous.directory.interval == reloadInterval {
            if previous.directory.table == nil, !startWithoutTable,
               case .failed(let error) = previous.directory.reload() {
                throw error  // start_without_table was switched off while no table loads
            }
            return RecipientsCheck(settings: self, directory: previous.directory)
        }
        let directory = RecipientDirectory(source: source, interval: reloadInterval, logger: context.logger)
        do {
            try directory.loadInitial()
        } catch {
            // Only a start may go without a table: a reload whose new tables do not load
            // fails whole and keeps the running check (and the table it has).
            guard startWithoutTable, !(context.previous is RecipientsCheck) else { throw error }
            context.logger.warning("starting without a recipient table (start_without_table = true); answering fail_action until one loads",
                                   metadata: ["error": "\(error)"])
        }
        directory.startWatching()
        return RecipientsCheck(settings: self, directory: directory)
    }
}

public final class RecipientsCheck: ReloadableCheck {
    public let name = "recipients"
    public let settings: RecipientsSettings
    public let directory: RecipientDirectory
    public var testMode: Bool { settings.testMode }
    public let failVerdict: Verdict

    private let rejectHasPlaceholder: Bool
    private let lookups: [Counter]  // indexed by LookupCounter

    enum LookupCounter: Int, CaseIterable {
        case known, unknown, override, notOurDomain, noRecipient, noTable
        var label: String {
            switch self {
            case .known: "known"
            case .unknown: "unknown"
            case .override: "override"
            case .notOurDomain: "not_our_domain"
            case .noRecipient: "no_recipient"
            case .noTable: "no_table"
            }
        }
    }

    public init(settings: RecipientsSettings, directory: RecipientDirectory) {
        self.settings = settings
        self.directory = directory
        self.failVerdict = Verdict(settings.failAction, reason: "recipients_no_table")
        self.rejectHasPlaceholder = settings.rejectAction.text?.contains("{recipient}") ?? false
        self.lookups = LookupCounter.allCases.map {
            Counter(label: "backstop_recipients_lookups_total", dimensions: [("result", $0.label)])
        }
    }

    public var files: [String] { directory.source.files }

    /// SIGHUP (ReloadableCheck): reads the tables now (WatchedTable.reloadAtSignal),
    /// without waiting for the next poll; a still-broken version is reported again.
    @discardableResult
    public func reload() -> [ConfigIssue] { directory.reloadAtSignal() }

    public func putInForce() { directory.putInForce() }

    /// Re-reads the tables if they changed (always, with `force`); for SIGHUP. Blocks while
    /// a large table is parsed, so call it off the event loops.
    @discardableResult
    public func reloadTables(force: Bool = false) -> RecipientReloadOutcome {
        directory.reload(force: force)
    }

    /// The SIGHUP hook for the server: re-reads the recipient tables of `engine`'s
    /// recipients check, if it has one. Blocks while parsing; call it off the event loops.
    @discardableResult
    public static func reloadTables(in engine: PolicyEngine, force: Bool = false) -> RecipientReloadOutcome? {
        (engine.checks["recipients"] as? RecipientsCheck)?.reloadTables(force: force)
    }

    public func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        .now(verdict(for: request))
    }

    /// The decision without the engine around it (the engine adds test mode and deadlines).
    public func verdict(for request: PolicyRequest) -> Verdict {
        guard let table = directory.table else {
            lookups[LookupCounter.noTable.rawValue].increment()
            return failVerdict
        }
        let match = request.withValueBytes(.recipient) { table.match($0, rules: settings.rules) } ?? .noAddress
        switch match {
        case .noAddress:
            lookups[LookupCounter.noRecipient.rawValue].increment()
            return .noOpinion("no_recipient")
        case .notOurDomain:
            lookups[LookupCounter.notOurDomain.rawValue].increment()
            return .noOpinion("not_our_domain")
        case .unknown:
            if let accepted = request.withValueBytes(.recipient, { settings.acceptsUnlisted($0) }) ?? nil {
                lookups[LookupCounter.known.rawValue].increment()
                return .noOpinion(accepted)
            }
            lookups[LookupCounter.unknown.rawValue].increment()
            // The newest edit may add this mailbox: refuse for now only, until it loads.
            if directory.newestEditFailed {
                return Verdict(Self.fill(settings.brokenTableAction, recipient: request.recipient), reason: "unknown_recipient_table_broken")
            }
            let action = rejectHasPlaceholder ? Self.fill(settings.rejectAction, recipient: request.recipient) : settings.rejectAction
            return Verdict(action, reason: "unknown_recipient")
        case .entry(let index, let overridden):
            if overridden {
                let override = table.entries[index].override
                lookups[LookupCounter.override.rawValue].increment()
                return Verdict(Self.fill(table.overrides[Int(override)], recipient: request.recipient), reason: "recipient_override")
            }
            lookups[LookupCounter.known.rawValue].increment()
            return .noOpinion("known_recipient")
        }
    }

    /// What the `recipients` socketmap says about an address.
    public enum MapAnswer: Sendable, Equatable {
        /// The table has it (a mailbox, a catch-all, or an entry with its own answer, which
        /// Backstop's check gives at RCPT).
        case known
        /// Not in the table, or not in one of our domains.
        case unknown
        /// No answer can be trusted now: no table is loaded, or its newest edit is broken.
        case fault(String)
    }

    /// The `recipients` socketmap (and batv-strip): the live table's answer for `address`.
    public func mapAnswer(for address: String) -> MapAnswer {
        guard let table = directory.table else { return .fault("no recipient table is loaded") }
        switch table.match(address, rules: settings.rules) {
        case .noAddress, .notOurDomain: return .unknown
        case .unknown:
            if Octets.with(address, { Self.isPostmaster($0) }) { return .known }
            return directory.newestEditFailed ? .fault("the newest edit of the recipient table is broken") : .unknown
        case .entry: return .known
        }
    }

    /// Whether the address's local part starts with "SRS0=" or "SRS1=", in any case.
    static func isSRS(_ address: UnsafeRawBufferPointer) -> Bool {
        guard address.count > 5, address[3] == UInt8(ascii: "0") || address[3] == UInt8(ascii: "1"),
              address[4] == UInt8(ascii: "=") else { return false }
        return address[0] | 0x20 == UInt8(ascii: "s") && address[1] | 0x20 == UInt8(ascii: "r") && address[2] | 0x20 == UInt8(ascii: "s")
    }

    /// Whether the address's local part is "postmaster", in any case.
    static func isPostmaster(_ address: UnsafeRawBufferPointer) -> Bool {
        guard let at = address.lastIndex(of: UInt8(ascii: "@")), at == 10 else { return false }
        return zip(address[..<at], "postmaster".utf8).allSatisfy { $0 | 0x20 == $1 }
    }

    /// Puts the address (as the client sent it; the response encoder sanitises it) into "{recipient}".
    /// The actions filled are refusals (the table's answers and both settings must refuse).
    static func fill(_ action: PolicyAction, recipient: String) -> PolicyAction {
        action.filled { $0 == "recipient" ? recipient : nil }
    }
}
