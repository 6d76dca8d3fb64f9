// The "batv" check and the two answers Postfix's canonical maps ask of BATV. At RCPT, a
// null-sender message (a bounce) to an address in a signing domain is refused unless the
// recipient carries a valid, unexpired tag made with one of our keys; exempt addresses,
// senders we never sign (exclude_senders), and untagged bounces before verify_since, pass.
// A recipient with a tag that is not valid is refused whatever the sender. For the socketmap listener it signs
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

    public var files: [String] { [settings.keyFile] }

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
        guard request.protocolState == .rcpt else { return .noOpinion() }
        let recipient = request.recipient
        guard isSigningDomain(recipient) else { return .noOpinion() }
        guard let tagged = BATVTag.parse(recipient) else {
            // Only a bounce needs a tag; a sender we never sign gets its bounces untagged.
            guard request.withValueBytes(.sender, { $0.isEmpty }) == true else { return .noOpinion() }
            if settings.exempt.contains(recipient) || settings.excludeSenders.contains(recipient) { return .noOpinion("batv_exempt") }
            // Mail from this address left untagged (quoted, or too long for a tag).
            if !BATVTag.signable(recipient) { return .noOpinion("batv_unsignable") }
            if let since = settings.verifySince, today() < since { return .noOpinion("batv_grace_no_tag") }
            return refusal(.noTag)
        }
        // A tagged recipient is judged whatever the sender: a tag we did not make is never
        // stripped, so accepting it would mean relaying it and bouncing it later.
        let result = BATVTag.verify(tagged, keys: keys, today: today())
        guard case .valid = result else { return refusal(result) }
        verified.increment()
        return .noOpinion("batv_valid")
    }

    private func refusal(_ result: BATVVerification) -> Verdict {
        refused[result.label]?.increment()
        return Verdict(settings.action, reason: "batv_" + result.label)
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

    /// batv-strip: the untagged form of a recipient whose tag carries our signature and
    /// whose untagged address `isKnown` accepts, or nil. A tag that expired in the last
    /// `stripGraceDays` is unwrapped too: its age is judged at RCPT, when the message is
    /// accepted, and cleanup may unwrap it later (a message accepted on the tag's last day
    /// and re-injected by an after-queue filter after midnight; Postfix's own bounce of a
    /// message that waited in its queue, 5 days by default), which must reach the mailbox,
    /// not bounce twice. An older one is not: mail that reaches cleanup without the RCPT
    /// check must not deliver a tag harvested long ago.
    public func strippedRecipient(_ recipient: String, isKnown: (String) -> Bool) -> String? {
        guard let plain = validlyTagged(recipient, expiredWithin: Self.stripGraceDays), isKnown(plain) else { return nil }
        stripped.increment()
        return plain
    }

    /// How many days after its expiry batv-strip still unwraps a tag of ours: Postfix's
    /// default maximal_queue_lifetime (5 days) and two for a filter's backlog and clocks.
    public static let stripGraceDays = 7

    /// The untagged form of an address in a signing domain whose tag is valid today (or
    /// expired at most `expiredWithin` days ago), or nil (no tag, a tag that is not ours,
    /// another domain).
    public func validlyTagged(_ address: String, expiredWithin grace: Int = 0) -> String? {
        guard isSigningDomain(address), let tagged = BATVTag.parse(address) else { return nil }
        let day = today()
        switch BATVTag.verify(tagged, keys: keys, today: day) {
        case .valid: return tagged.address
        case .expired where BATVTag.daysSinceExpiry(tagged, today: day) <= grace: return tagged.address
        case .expired, .noTag, .badSignature, .unknownKey: return nil
        }
    }

    /// The untagged form of an address in a signing domain that carries a tag, valid or not.
    public func taggedOwnAddress(_ address: String) -> String? {
        guard isSigningDomain(address) else { return nil }
        return BATVTag.parse(address)?.address
    }

    /// `backstop batv verify`: what the tag of `address` is worth today.
    public func verification(of address: String) -> BATVVerification {
        BATVTag.verify(address, keys: keys, today: today())
    }

    /// The address has a local part and its domain is one we sign for.
    func isSigningDomain(_ address: String) -> Bool {
        guard let (local, domainPart) = Octets.splitAddress(address), !local.isEmpty else { return false }
        var domain = String(domainPart)
        if domain.hasSuffix(".") { domain.removeLast() }
        let ascii = domain.utf8.contains { $0 >= 0x80 } ? DomainName.asciiForm(domain) : domain.lowercased()
        return ascii.map(settings.domains.contains) ?? false
    }
}
