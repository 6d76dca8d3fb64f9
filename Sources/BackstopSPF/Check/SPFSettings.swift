// The [spf] configuration section: DNS and worker settings for SPFVerifier, the actions
// per SPF result, the header style and the skip rules. Defaults are those of the settings'
// own init (written once). Reading only; SPFCheck acts on it.

import BackstopCore
import Glibc
import NIOCore

public struct SPFSettings: CheckSettings, Equatable {
    public enum HeaderStyle: String, Sendable, Equatable {
        case receivedSPF = "received-spf"
        case authenticationResults = "authentication-results"
        case none
    }

    public var verifier = SPFVerifier.Settings()
    public var testMode = false
    /// Check the HELO identity first and refuse on its fail (pypolicyd-spf's HELO_reject).
    public var heloCheck = false
    public var header: HeaderStyle = .receivedSPF
    /// The receiving host's name in headers and for %{r}; never a recipient address.
    public var receiver: String
    public var authservID: String
    /// A page explaining SPF refusals; {domain}, {client}, {sender}, … are filled in.
    public var explanationURL: String?
    public var skipAuthenticated = true
    public var trustedNetworks = NetworkList(CIDR.loopback)
    public var skipSenderDomains: [String] = []
    /// Verified client names (Postfix's client_name) that are never checked, by suffix:
    /// "mail.example.net", or ".outbound.example.net" for every name under it.
    public var trustedClientNames: [String] = []
    /// HELO names never checked, matched like trustedClientNames. The HELO name is the
    /// client's own claim: only for names that only your own relays use.
    public var trustedHeloNames: [String] = []
    /// Recipients for whom SPF never refuses: "postmaster@example.com", "abuse@" (that local
    /// part in any domain) or "@example.com".
    public var skipRecipients: [String] = []
    public var strictDomains: [String] = []
    /// The refusal for a strict domain's result other than pass or temperror (the text says
    /// which result it was, not "fail").
    public var strictAction: PolicyAction = SPFSettings.defaultStrictAction
    public var actions: [SPFResult: PolicyAction] = SPFSettings.defaultActions

    public static let defaultStrictAction = PolicyAction.reply(
        code: 550, enhanced: "5.7.23",
        text: "SPF {result}: {domain} requires an SPF pass for its mail, and {client} does not get one for {sender}. {explanation}")

    public static let defaultActions: [SPFResult: PolicyAction] = [
        .pass: .dunno, .neutral: .dunno, .none: .dunno, .softfail: .dunno, .permerror: .dunno,
        .fail: .reply(code: 550, enhanced: "5.7.23",
                      text: "SPF fail: {domain} does not allow {client} to send mail as {sender}. {explanation}"),
        .temperror: .deferIfPermit("4.7.24 SPF temperror: cannot check the SPF policy of {domain} now, try again later"),
    ]

    public static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let length = buffer.firstIndex(of: 0) ?? buffer.count
        let name = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }

    public init() {
        receiver = SPFSettings.hostName
        authservID = receiver
        verifier.receiver = receiver
    }

    public init(reading section: ConfigSection, baseDirectory: String) {
        self.init()
        let d = SPFSettings()
        testMode = section.bool("test_mode", default: d.testMode)
        var resolvers: [DNSResolverAddress] = []
        for text in section.stringArray("resolvers", default: []) {
            if let address = DNSResolverAddress(text) { resolvers.append(address) } else {
                section.report("resolvers", "\"\(LogEscaping.escape(text))\" is not a resolver address: use \"192.0.2.53\", \"192.0.2.53:53\" or \"[2001:db8::53]:53\"")
            }
        }
        verifier.resolvers = resolvers
        verifier.dnsTimeout = section.duration("dns_timeout", default: d.verifier.dnsTimeout, range: .milliseconds(50)...(.seconds(30)))
        verifier.evaluationDeadline = section.duration("evaluation_deadline", default: d.verifier.evaluationDeadline,
                                                       range: .milliseconds(100)...(.seconds(60)))
        if verifier.dnsTimeout > verifier.evaluationDeadline {
            section.report("dns_timeout", "is longer than evaluation_deadline (\(DurationText.format(verifier.evaluationDeadline))): make it shorter")
        }
        verifier.dnsCache.entries = section.int("dns_cache_size", default: d.verifier.dnsCache.entries, range: 0...10_000_000)
        verifier.dnsCache.bytes = section.int("dns_cache_bytes", default: d.verifier.dnsCache.bytes, range: 0...(1 << 34))
        verifier.workers = section.int("workers", default: d.verifier.workers, range: 1...256)
        verifier.queueSize = section.int("queue_size", default: d.verifier.queueSize, range: 1...1_000_000)
        let isolation = section.string("isolation", default: "process")
        if isolation.lowercased() != "process" {
            section.report("isolation", "libspf2 runs only in worker processes now: remove the key or set \"process\"")
        }
        verifier.workerUser = section.string("worker_user", default: d.verifier.workerUser)
        if verifier.workerUser.isEmpty || verifier.workerUser == "root" || verifier.workerUser.utf8.count > SPFSettings.maxUserName
            || verifier.workerUser.hasPrefix("-")
            || verifier.workerUser.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7F || $0 == ":" || $0 == "/" || $0.properties.isWhitespace }) {
            section.report("worker_user", "must name an unprivileged user (at most \(SPFSettings.maxUserName) octets, no spaces, control characters, \":\" or \"/\", not starting with \"-\"), such as \"nobody\" or a dedicated \"backstop-spf\"")
            verifier.workerUser = d.verifier.workerUser
        } else if !SystemAccounts.userExists(verifier.workerUser) {
            // Workers would refuse to start, and every evaluation would end as temperror.
            section.report("worker_user", "no such user \"\(verifier.workerUser)\" on this system: create it (adduser --system --no-create-home \(verifier.workerUser)) or name another, such as \"nobody\"")
        }
        verifier.resultCacheTTL = section.duration("result_cache_ttl", default: d.verifier.resultCacheTTL, range: .zero...(.hours(1)))
        verifier.resultCacheSize = section.int("result_cache_size", default: d.verifier.resultCacheSize, range: 0...10_000_000)
        verifier.resultCacheBytes = section.int("result_cache_bytes", default: d.verifier.resultCacheBytes, range: 0...(1 << 34))
        heloCheck = section.bool("helo_check", default: d.heloCheck)
        let style = section.string("header", default: d.header.rawValue)
        if let parsed = HeaderStyle(rawValue: style.lowercased()) { header = parsed } else {
            section.report("header", "unknown header style \"\(LogEscaping.escape(style))\": use \"received-spf\", \"authentication-results\" or \"none\"")
        }
        receiver = section.string("receiver", default: d.receiver)
        if !SPFSettings.isHeaderToken(receiver) {
            section.report("receiver", "must be a host name such as \"mx.example.org\"")
            receiver = d.receiver
        }
        verifier.receiver = receiver
        authservID = section.string("authserv_id", default: receiver)
        if !SPFSettings.isHeaderToken(authservID) {
            section.report("authserv_id", "must be a single token such as \"mx.example.org\"")
            authservID = receiver
        }
        explanationURL = section.optionalString("explanation_url")
        if let url = explanationURL, url.isEmpty { explanationURL = nil }
        skipAuthenticated = section.bool("skip_authenticated", default: d.skipAuthenticated)
        trustedNetworks = section.networks("trusted_networks", default: d.trustedNetworks.networks)
        skipSenderDomains = section.stringArray("skip_sender_domains", default: []).map(SPFSettings.normaliseDomain)
        strictDomains = section.stringArray("strict_domains", default: []).map(SPFSettings.normaliseDomain)
        trustedClientNames = section.stringArray("trusted_client_names", default: d.trustedClientNames).map(SPFSettings.normaliseName)
        trustedHeloNames = section.stringArray("trusted_helo_names", default: d.trustedHeloNames).map(SPFSettings.normaliseName)
        skipRecipients = section.stringArray("skip_recipients", default: d.skipRecipients).map(SPFSettings.normaliseRecipientEntry)
        for entry in skipRecipients where !entry.utf8.contains(UInt8(ascii: "@")) || entry == "@" {
            section.report("skip_recipients", "\"\(LogEscaping.escape(entry))\" is not user@domain, user@ or @domain")
        }
        for name in trustedClientNames + trustedHeloNames where name.isEmpty || name == "." {
            section.report(trustedClientNames.contains(name) ? "trusted_client_names" : "trusted_helo_names", "an empty name would match every client")
        }
        strictAction = section.action("strict_action", default: d.strictAction)
        if !SPFCheck.refusesForCertain(strictAction) {
            section.report("strict_action", "must refuse: a 5NN or 4NN reply, REJECT or DEFER (DEFER_IF_PERMIT, DEFER_IF_REJECT let the mail through when a later restriction decides)")
        }

        let actionSection = section.section("actions")
        for result in SPFResult.allCases {
            actions[result] = actionSection.action(result.rawValue, default: SPFSettings.defaultActions[result]!)
        }
        actionSection.finish()
    }

    static func isHeaderToken(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 255
            && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }
    }

    /// A host name or ".suffix", lowercased, without a trailing dot, and in A-labels (the form
    /// SPF compares: a domain written in U-labels, `bücher.example`, is `xn--bcher-kva.example`).
    static func normaliseName(_ text: String) -> String {
        var name = text.trimmingSpaces.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        return asciiForm(name)
    }

    /// `name` in A-labels when it holds 8-bit text that is a domain name; as it is otherwise.
    static func asciiForm(_ name: String) -> String {
        guard name.utf8.contains(where: { $0 >= 0x80 }) else { return name }
        let leadingDot = name.hasPrefix(".")
        guard let ascii = DomainName.asciiForm(leadingDot ? String(name.dropFirst()) : name) else { return name }
        return (leadingDot ? "." : "") + ascii.lowercased()
    }

    /// True when `name` is one of `names` or ends with one that starts with ".".
    static func nameListed(_ name: String, in names: [String]) -> Bool {
        let name = normaliseName(name)
        guard !name.isEmpty, name != "unknown" else { return false }
        return names.contains { $0.hasPrefix(".") ? name.hasSuffix($0) : name == $0 }
    }

    /// True when `recipient` matches an entry of skip_recipients. A recipient without a
    /// domain (`RCPT TO:<postmaster>`, which RFC 5321 §4.5.1 makes every server accept)
    /// matches a `local@` entry.
    static func recipientListed(_ recipient: String, in entries: [String]) -> Bool {
        var lowered = recipient.lowercased()
        guard let (local, domain) = Octets.splitAddress(lowered) else { return entries.contains(lowered + "@") }
        if domain.utf8.contains(where: { $0 >= 0x80 }) {
            // A domain in U-labels: compared in A-labels, as the entries are kept.
            lowered = local + "@" + asciiForm(String(domain))
        }
        let utf8 = lowered.utf8
        let split = local.utf8.count  // where the "@" is, in either form
        // "user@domain" itself, "user@" (its local part with the @) or "@domain".
        return entries.contains { entry in
            let e = entry.utf8
            if e.count == utf8.count { return e.elementsEqual(utf8) }
            if e.last == UInt8(ascii: "@") { return e.count == split + 1 && e.elementsEqual(utf8.prefix(split + 1)) }
            return e.first == UInt8(ascii: "@") && e.count == utf8.count - split && e.elementsEqual(utf8.suffix(e.count))
        }
    }

    /// A skip_recipients entry as recipients are compared: lowercased, its domain in A-labels.
    static func normaliseRecipientEntry(_ text: String) -> String {
        let entry = text.trimmingSpaces.lowercased()
        guard let (local, domain) = Octets.splitAddress(entry) else { return entry }
        return local + "@" + asciiForm(String(domain))
    }

    static func normaliseDomain(_ text: String) -> String {
        var d = text.trimmingSpaces.lowercased()
        if d.hasPrefix("@") { d.removeFirst() }
        if d.hasSuffix(".") { d.removeLast() }
        return asciiForm(d)
    }

    /// True when `domain` is one of `list` or a subdomain of one.
    static func listed(_ domain: String, in list: [String]) -> Bool {
        guard !list.isEmpty else { return false }
        let d = normaliseDomain(domain)
        return list.contains { d == $0 || d.hasSuffix("." + $0) }
    }

    /// The longest evaluation a request deadline allows: it must end well inside it, so that
    /// the temperror action (not the engine's fallback) answers a slow DNS. A fifth of the
    /// deadline (at least 50 ms) is left; never under 50 ms.
    static func evaluationCeiling(_ deadline: TimeAmount) -> TimeAmount {
        max(deadline - .milliseconds(max(deadline.nanoseconds / 1_000_000 / 5, 50)), .milliseconds(50))
    }

    public func makeCheck(_ context: CheckBuildContext) throws -> any Check {
        var settings = self
        // A longer evaluation_deadline is a configuration warning (unreachable(in:)).
        settings.verifier.evaluationDeadline = min(settings.verifier.evaluationDeadline, Self.evaluationCeiling(context.deadline))
        let previous = context.previous as? SPFCheck
        if let previous, previous.settings.verifier == settings.verifier {
            return SPFCheck(settings: settings, verifier: previous.verifier, logger: context.logger, logLevel: context.logLevel,
                            previous: previous)
        }
        return SPFCheck(settings: settings, verifier: SPFVerifier(settings: settings.verifier, logger: context.logger),
                        logger: context.logger, logLevel: context.logLevel, previous: previous)
    }

    /// The longest worker_user accepted (Linux's useradd allows 32).
    static let maxUserName = 32

    /// Workers must not share the server's user: a worker taken over by a hostile record
    /// could then signal the server or read its memory.
    public func conflicts(with configuration: Configuration) -> [(key: String, message: String)] {
        workerUserConflicts(with: configuration, running: SPFProcesses.supervisedWorkerUser)
    }

    /// `running`: the user the supervisor starts workers as, when one runs. Workers run as
    /// that user whatever a reload names, so it is what must not be server.user (a server
    /// started without [spf] pins the default, "nobody").
    func workerUserConflicts(with configuration: Configuration, running: String?) -> [(key: String, message: String)] {
        guard let user = configuration.server.user else { return [] }
        if user == verifier.workerUser {
            return [("worker_user", "is server.user (\"\(LogEscaping.escape(user))\"): SPF workers need a user of their own, e.g. \"nobody\" or one made with `adduser --system --no-create-home backstop-spf`")]
        }
        if let running, running == user {
            return [("worker_user", "the SPF supervisor, started with the server, starts workers as \"\(LogEscaping.escape(running))\" only, which is server.user: restart backstop to run them as \"\(LogEscaping.escape(verifier.workerUser))\"")]
        }
        return []
    }

    /// Settings that keep the header from the mail: Postfix takes one action per answer, so
    /// an answer that is neither DUNNO nor a refusal cannot carry the header too, and
    /// Postfix ignores PREPEND at END-OF-MESSAGE (access(5)).
    /// Also a worker_user that a reload changed after the server gave up root: the
    /// supervisor starts workers as the user of the server's start only.
    public func unreachable(in configuration: Configuration) -> [(key: String, message: String)] {
        var out = workerUserUnreachable(running: SPFProcesses.supervisedWorkerUser)
        let ceiling = Self.evaluationCeiling(configuration.policy.deadline)
        if verifier.evaluationDeadline > ceiling {
            out.append(("evaluation_deadline", "\(DurationText.format(verifier.evaluationDeadline)) is not well inside policy.deadline (\(DurationText.format(configuration.policy.deadline))): \(DurationText.format(ceiling)) is used, so that a slow evaluation gets the temperror action rather than the engine's fallback"))
        }
        for state in ProtocolState.allCases where SPFCheck.beforeMailFrom(state) && configuration.policy.runs("spf", at: state) {
            out.append(("", "policy.\(state.configKey) lists spf, but \(state.rawValue) comes before MAIL FROM: SPF is never evaluated there (it would check every session as a bounce); list spf in policy.rcpt"))
        }
        guard header != .none else { return out }
        let name = header == .receivedSPF ? "Received-SPF" : "Authentication-Results"
        for result in SPFResult.allCases {
            guard let action = actions[result] else { continue }
            let text = "\"\(LogEscaping.escape(ResponseEncoder.actionText(action), limit: 80))\""
            switch action {
            case .prepend:
                out.append(("actions.\(result.rawValue)", "\(text) and the \(name) header cannot go in one answer: a message's first answer carries the header and drops this line, later ones carry this line"))
            case .hold where testMode || configuration.policy.testMode:
                break  // test mode logs it and answers the header instead
            case .ok, .warn, .info, .hold:
                out.append(("actions.\(result.rawValue)", "\(text) cannot carry the \(name) header too (Postfix takes one action per answer): a message whose recipients all get it arrives without the header; DUNNO accepts with the header"))
            case .deferIfReject:
                out.append(("actions.\(result.rawValue)", "\(text) cannot carry the \(name) header too (Postfix takes one action per answer), and lets the mail through when nothing later rejects it: a message whose recipients all get it arrives without the header"))
            default:
                break
            }
        }
        // A rate-limit rule answering PREPEND where spf adds its header: one answer carries
        // one of the two, the one whose check is listed first.
        for rule in (configuration.checks["ratelimit"] as? RateLimitSettings)?.rules ?? [] {
            // Where spf adds no header (before MAIL FROM; at END-OF-MESSAGE Postfix ignores PREPEND) nothing competes.
            guard case .prepend = rule.action, rule.state != .endOfMessage, !SPFCheck.beforeMailFrom(rule.state),
                  let checks = configuration.policy.stages[rule.state],
                  let spfAt = checks.firstIndex(of: "spf"), let limitAt = checks.firstIndex(of: "ratelimit") else { continue }
            let text = "\"\(LogEscaping.escape(ResponseEncoder.actionText(rule.action), limit: 80))\""
            let what = limitAt < spfAt
                ? "ratelimit is listed first, so the rule's line takes the message's first answer and the header waits for the next recipient's: a message with one recipient arrives without it"
                : "spf is listed first, so the message's first answer carries the header and drops the rule's line for that recipient"
            out.append(("header", "rate-limit rule \"\(LogEscaping.escape(rule.name))\" answers \(text) at \(rule.state.configKey), where spf adds the \(name) header, and one answer carries one of them: \(what)"))
        }
        // Listed where a header can go as well (RCPT, say), the message's header goes there.
        let elsewhere = ProtocolState.allCases.contains { $0 != .endOfMessage && configuration.policy.runs("spf", at: $0) }
        if configuration.policy.runs("spf", at: .endOfMessage) && !elsewhere {
            out.append(("header", "policy.end_of_message lists spf, and no other stage does: Postfix ignores PREPEND there (access(5)), so no message gets the \(name) header; list spf in policy.rcpt"))
        }
        return out
    }

    /// A worker_user other than `running`, the user the supervisor starts workers as.
    func workerUserUnreachable(running: String?) -> [(key: String, message: String)] {
        guard let running, running != verifier.workerUser else { return [] }
        let was = LogEscaping.escape(running)
        return [("worker_user", "changed to \"\(LogEscaping.escape(verifier.workerUser))\": taken at start only when server.user is set (the SPF supervisor starts workers as \"\(was)\" only), so workers run as \"\(was)\" until a restart")]
    }

    /// The [spf] settings of a configuration, or the defaults when it has none (for the CLI).
    public static func from(_ configuration: Configuration) -> SPFSettings {
        configuration.checks["spf"] as? SPFSettings ?? SPFSettings()
    }

    /// Makes the "spf" check known to the configuration reader (at start-up).
    public static func register() {
        CheckCatalog.register(CheckKind(name: "spf") { section, baseDir in SPFSettings(reading: section, baseDirectory: baseDir) })
    }
}
