// The "batv" check and the two answers Postfix's canonical maps ask of BATV. At RCPT, a
// null-sender message (a bounce) to an address in a signing domain is refused unless the
// recipient carries a valid, unexpired tag made with one of our keys; exempt addresses,
// and untagged bounces before verify_since, pass. For the socketmap listener it signs
// senders (batv-sign) and strips valid tags from recipients (batv-strip). Tag arithmetic
// is BATVTag.swift; the key file is BATVKeyFile.swift; nothing here touches a socket.

import Logging
import Metrics
import NIOConcurrencyHelpers

public final class BATVCheck: ReloadableCheck {
    public let name = "batv"
    public let settings: BATVSettings
    public var testMode: Bool { settings.testMode }
    public let failVerdict: Verdict
    /// Today in days since the epoch (injectable for tests).
    private let today: @Sendable () -> Int
    /// The keys in force, in file order (the last signs); replaced whole by a reload.
    private let keyring: NIOLockedValueBox<[BATVKey]>

    private let signed = Counter(label: "backstop_batv_signed_total")
    private let stripped = Counter(label: "backstop_batv_stripped_total")
    private let verified = Counter(label: "backstop_batv_verified_total")
    private let refused: [String: Counter]

    public init(settings: BATVSettings, keys: [BATVKey], today: @escaping @Sendable () -> Int = BATVTag.today) {
        precondition(!keys.isEmpty, "a key file yields at least one key")
        self.settings = settings
        self.keyring = NIOLockedValueBox(keys)
        self.today = today
        self.failVerdict = Verdict(settings.failAction, reason: "batv_failed")
        var refused: [String: Counter] = [:]
        for reason in [BATVVerification.noTag, .badSignature, .expired, .unknownKey] {
            refused[reason.label] = Counter(label: "backstop_batv_refused_total", dimensions: [("reason", reason.label)])
        }
        self.refused = refused
    }

    public var keys: [BATVKey] { keyring.withLockedValue { $0 } }

    /// SIGHUP: reads the key file again; a broken edit is reported and the keys in force stay.
    @discardableResult
    public func reload() -> [ConfigIssue] {
        do {
            let keys = try BATVKeyFile.load(settings.keyFile)
            keyring.withLockedValue { $0 = keys }
            return []
        } catch {
            return error.issues
        }
    }

    // MARK: RCPT

    public func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        .now(verdict(for: request))
    }

    /// The decision without the engine around it (the engine adds test mode and deadlines).
    public func verdict(for request: PolicyRequest) -> Verdict {
        guard request.protocolState == .rcpt,
              request.withValueBytes(.sender, { $0.isEmpty }) == true else { return .noOpinion() }
        let recipient = request.recipient
        guard isSigningDomain(recipient) else { return .noOpinion() }
        let tagged = BATVTag.parse(recipient)
        if settings.exempt.contains(tagged?.address ?? recipient) { return .noOpinion("batv_exempt") }
        let today = self.today()
        let result = tagged.map { BATVTag.verify($0, keys: keys, today: today, lifetimeDays: settings.lifetimeDays) } ?? .noTag
        switch result {
        case .valid:
            verified.increment()
            return .noOpinion("batv_valid")
        case .noTag where settings.verifySince.map({ today < $0 }) ?? false:
            return .noOpinion("batv_grace_no_tag")
        default:
            refused[result.label]?.increment()
            return Verdict(settings.action, reason: "batv_" + result.label)
        }
    }

    // MARK: the socketmap's questions

    /// batv-sign: the tagged form of a sender we sign, or nil (not ours, excluded, already
    /// tagged, the null sender, or too long to tag).
    public func signedSender(_ sender: String) -> String? {
        guard !BATVTag.looksTagged(sender), isSigningDomain(sender), !settings.excludeSenders.contains(sender),
              let key = keys.last,
              let tagged = BATVTag.sign(sender, key: key, today: today(), lifetimeDays: settings.lifetimeDays) else { return nil }
        signed.increment()
        return tagged
    }

    /// batv-strip: the untagged form of a recipient whose tag is valid and whose untagged
    /// address `isKnown` accepts, or nil.
    public func strippedRecipient(_ recipient: String, isKnown: (String) -> Bool) -> String? {
        guard isSigningDomain(recipient), let tagged = BATVTag.parse(recipient),
              case .valid = BATVTag.verify(tagged, keys: keys, today: today(), lifetimeDays: settings.lifetimeDays),
              isKnown(tagged.address) else { return nil }
        stripped.increment()
        return tagged.address
    }

    /// `backstop batv verify`: what the tag of `address` is worth today.
    public func verification(of address: String) -> BATVVerification {
        BATVTag.verify(address, keys: keys, today: today(), lifetimeDays: settings.lifetimeDays)
    }

    /// The address has a local part and its domain is one we sign for.
    func isSigningDomain(_ address: String) -> Bool {
        guard let at = address.utf8.lastIndex(of: UInt8(ascii: "@")), at != address.utf8.startIndex else { return false }
        var domain = String(address[address.index(after: at)...])
        if domain.hasSuffix(".") { domain.removeLast() }
        let ascii = domain.utf8.contains { $0 >= 0x80 } ? DomainName.asciiForm(domain) : domain.lowercased()
        return ascii.map(settings.domains.contains) ?? false
    }
}
