// The [batv] section: which domains sign and verify, where the keys are, how long a tag
// lives, when verification begins, and who is exempt. Defaults live here once. Building
// the running check (which reads the key file) is here too; the check is BATVCheck.swift.

import Foundation
import NIOCore

public struct BATVSettings: CheckSettings {
    public static let defaultKeyFile = "batv-keys"
    public static let defaultLifetimeDays = 7
    public static let lifetimeDays = 1...BATVTag.maxLifetimeDays
    public static let defaultExempt = ["postmaster", "abuse"]
    public static let defaultAction = PolicyAction.reply(
        code: 550, enhanced: "5.7.1", text: "Bounce refused: it does not answer mail sent from this address (no valid BATV tag)")

    /// The key file, resolved against the configuration's directory.
    public var keyFile: String
    /// Signing domains, lowercased A-labels: their senders are signed, bounces to them verified.
    public var domains: Set<String>
    public var lifetimeDays: Int
    /// Days since the epoch from which a bounce without a tag is refused; nil: always.
    public var verifySince: Int?
    /// Recipients that always receive bounces.
    public var exempt: AddressList
    /// Senders never signed (mailing-list software that compares envelope senders); their
    /// bounces come back untagged, so they are exempt from verification too.
    public var excludeSenders: AddressList
    public var action: PolicyAction
    public var testMode: Bool
    public var failAction: PolicyAction

    public init(keyFile: String, domains: Set<String>, lifetimeDays: Int = defaultLifetimeDays, verifySince: Int? = nil,
                exempt: AddressList = AddressList(), excludeSenders: AddressList = AddressList(),
                action: PolicyAction = defaultAction, testMode: Bool = false, failAction: PolicyAction = .dunno) {
        self.keyFile = keyFile
        self.domains = domains
        self.lifetimeDays = lifetimeDays
        self.verifySince = verifySince
        self.exempt = exempt
        self.excludeSenders = excludeSenders
        self.action = action
        self.testMode = testMode
        self.failAction = failAction
    }

    public init(reading section: ConfigSection, baseDirectory: String) {
        let d = BATVSettings(keyFile: Self.defaultKeyFile, domains: [])
        let file = section.string("key_file", default: d.keyFile)
        var domains = Set<String>()
        let listed = section.stringArray("domains", default: [])
        if listed.isEmpty { section.report("domains", "list the domains whose senders are signed, e.g. [\"example.org\"]") }
        for domain in listed {
            guard !domain.utf8.contains(UInt8(ascii: "@")), let ascii = DomainName.asciiForm(domain), !ascii.isEmpty else {
                section.report("domains", "\"\(LogEscaping.escape(domain))\" is not a domain name (write example.org, without @)")
                continue
            }
            domains.insert(ascii)
        }
        let day = TimeAmount.hours(24).nanoseconds
        let fallback = TimeAmount.nanoseconds(day * Int64(d.lifetimeDays))
        var lifetime = section.duration("lifetime", default: fallback)
        if !(day...(day * Int64(Self.lifetimeDays.upperBound))).contains(lifetime.nanoseconds) {
            let shown = lifetime.nanoseconds % day == 0 ? "\(lifetime.nanoseconds / day)d" : DurationText.format(lifetime)
            section.report("lifetime", "\(shown) is out of range: use \"1d\" to \"\(Self.lifetimeDays.upperBound)d\"")
            lifetime = fallback
        } else if lifetime.nanoseconds % day != 0 {
            section.report("lifetime", "a tag lives whole days: write e.g. \"7d\"")
        }
        var since: Int?
        if case .other? = section.raw("verify_since") {
            // TOML's own date (verify_since = 2026-12-07): the same date, in quotes.
            section.report("verify_since", "write the date in quotes: verify_since = \"YYYY-MM-DD\"")
        } else if let text = section.optionalString("verify_since") {
            since = Self.day(parsing: text)
            if since == nil { section.report("verify_since", "\"\(LogEscaping.escape(text))\" is not a date: write YYYY-MM-DD, e.g. \"2026-12-07\"") }
        }
        let action = section.action("action", default: d.action)
        if !action.isRefusal || action.refusesOnlyIfLaterRejects {
            section.report("action", "must refuse: use a reply such as \"550 5.7.1 Bounce refused\" (DEFER_IF_REJECT lets the bounce through when nothing after it rejects)")
        }
        self.init(keyFile: file.hasPrefix("/") || baseDirectory.isEmpty ? file : baseDirectory + "/" + file,
                  domains: domains, lifetimeDays: Int(lifetime.nanoseconds / day),
                  verifySince: since,
                  exempt: AddressList(reading: section, key: "exempt", default: Self.defaultExempt, localParts: true),
                  excludeSenders: AddressList(reading: section, key: "exclude_senders", default: [], localParts: true),
                  action: action, testMode: section.bool("test_mode", default: d.testMode),
                  failAction: section.action("fail_action", default: d.failAction))
    }

    /// After start the server runs as server.user and must still read the key file at a
    /// reload: a file owned by someone else would load at start (as root) and never again.
    public func conflicts(with configuration: Configuration) -> [(key: String, message: String)] {
        guard let user = configuration.server.user, let account = getpwnam(user) else { return [] }
        var info = stat()
        // A missing file is reported when the check is built, with the path and errno.
        guard stat(keyFile, &info) == 0, info.st_uid != account.pointee.pw_uid else { return [] }
        return [("key_file", "\(LogEscaping.escape(keyFile)) is owned by uid \(info.st_uid), but the server runs as \(LogEscaping.escape(user)) (server.user) after start and could not re-read it: chown \(LogEscaping.escape(user)) it")]
    }

    /// Signing needs no policy stage: a socketmap listener serves it.
    public func usedOutsideStages(in configuration: Configuration) -> Bool {
        configuration.listeners.contains { $0.protocol == .socketmap }
    }

    public func unreachable(in configuration: Configuration) -> [(key: String, message: String)] {
        var out: [(key: String, message: String)] = []
        if configuration.policy.stage(listing: "batv") != .rcpt {
            out.append(("", "bounces are verified at RCPT, but policy.rcpt does not list batv"))
        }
        if !usedOutsideStages(in: configuration) {
            out.append(("", "no [[listen]] has protocol = \"socketmap\", so Postfix cannot ask for signed senders: genuine bounces come back untagged and are refused"))
        }
        if configuration.checks["recipients"] == nil {
            out.append(("", "there is no [recipients] section: the batv-strip map unwraps a tag only for a recipient that table knows, so genuine bounces to tagged addresses are refused"))
        }
        return out
    }

    /// Reads the key file. On a reload, a broken edit of the same file keeps the keys in
    /// force (the reload then reports it, like a broken table edit); at start it is fatal.
    public func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        var settings = self
        settings.exempt.delimiters = context.recipientDelimiters
        settings.excludeSenders.delimiters = context.recipientDelimiters
        do {
            return BATVCheck(settings: settings, keys: try BATVKeyFile.load(keyFile))
        } catch {
            guard let previous = context.previous as? BATVCheck, previous.settings.keyFile == keyFile else { throw error }
            return BATVCheck(settings: settings, keys: previous.keys)
        }
    }

    /// Days since the epoch of a YYYY-MM-DD date (proleptic Gregorian, UTC), or nil.
    public static func day(parsing text: String) -> Int? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }), parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
              let y = Int(parts[0]), let m = Int(parts[1]), let d = Int(parts[2]),
              (1970...9999).contains(y), (1...12).contains(m), (1...31).contains(d) else { return nil }
        let monthDays = [31, (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard d <= monthDays[m - 1] else { return nil }
        // Days from civil (H. Hinnant's algorithm).
        let yy = m <= 2 ? y - 1 : y
        let era = yy / 400
        let yoe = yy - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
