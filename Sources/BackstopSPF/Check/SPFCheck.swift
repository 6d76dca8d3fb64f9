// The "spf" check: decides what to answer Postfix from SPF results. It applies the skip
// rules, takes the outcome from the verifier (its cache answers at once, a miss waits for
// a worker), maps each result to its configured action, and makes the Received-SPF or
// Authentication-Results header due once per message: the header is marked as added only
// when an answer that carries it is written (see HeaderOnce). It never calls libspf2.

import BackstopCore
import Logging
import NIOCore

public final class SPFCheck: RetirableCheck {
    public let name = "spf"
    public let settings: SPFSettings
    public let verifier: SPFVerifier
    /// Per message (Postfix's instance): its outcomes and whether its header was added. A
    /// connection keeps the message it is on itself (HeldMessage, in its ConnectionMessage);
    /// this cache holds the messages of connections that ended, and those decided without a
    /// connection (`backstop query`).
    let messages: BoundedCache<MessageKey, MessageState>
    let logger: Logger
    /// Whether outcomes are logged (read once: a new check is made on every reload).
    let logsOutcomes: Bool
    /// Per result (`SPFResult.index`): its action, and its decision-log reasons, made once
    /// instead of per request; `reasons[result.index * 4 + (helo ? 2 : 0) + (cached ? 1 : 0)]`.
    let actions: [PolicyAction]
    let reasons: [String]
    /// spf.receiver as the Received-SPF line writes it.
    let receiver: SPFHeader.Receiver

    /// Postfix's instance attribute, hashed once with FNV-1a: the cache's dictionary then
    /// hashes 8 octets, not the string, on every lookup, insertion and eviction. The instance
    /// comes from Postfix (smtpd's process id, time and counters), not from the SMTP client.
    struct MessageKey: CacheKey {
        let instance: String
        let fingerprint: UInt64

        init(_ instance: String) {
            self.instance = instance
            fingerprint = Octets.with(instance) { FNV1a.hash($0) }
        }

        static func == (a: MessageKey, b: MessageKey) -> Bool { a.fingerprint == b.fingerprint && a.instance == b.instance }
        func hash(into hasher: inout Hasher) { hasher.combine(fingerprint) }
    }

    /// Is its own header flag: one object per message, not two. `evaluated` is set once,
    /// by `keep`, before the state is kept anywhere another request could find it (the
    /// verdict is made from the outcomes while they are still the caller's, not copied back
    /// out of here).
    final class MessageState: HeaderOnce, @unchecked Sendable {
        private(set) var evaluated = SPFEvaluated()
        var header: HeaderOnce { self }
        /// What the instance was evaluated for: a request with the same instance but another
        /// client, sender or HELO is another message.
        let client: String, sender: String, helo: String
        func isFor(client: String, sender: String, helo: String) -> Bool {
            Octets.equal(self.client, client) && Octets.equal(self.sender, sender) && Octets.equal(self.helo, helo)
        }
        init(client: String, sender: String, helo: String) {
            self.client = client
            self.sender = sender
            self.helo = helo
            super.init()
        }
        func keep(_ evaluated: consuming SPFEvaluated) { self.evaluated = evaluated }
        /// What it costs the per-message cache as the state of `instance`.
        func cost(instance: String) -> Int { evaluated.cost + instance.utf8.count }
    }

    /// The message a connection is on, in the slot of its ConnectionMessage: found without a
    /// lock or a hash, and begun anew (the same object) when the connection's next message
    /// begins: an evaluation of the earlier message that ends after that no longer finds its
    /// instance here and keeps its state in `messages`. `state` is nil
    /// until the message's outcomes are known. Handed to `messages` when the connection
    /// ends, so that a request of the same message on Postfix's next connection finds its
    /// outcome and header flag.
    ///
    /// @unchecked Sendable: read and changed only on the connection's event loop. The same
    /// is why Swift's run-time exclusivity check is off for its three fields: each access is
    /// a read or a single assignment that calls out to nothing, so none can overlap another.
    final class HeldMessage: ConnectionMemo, @unchecked Sendable {
        @exclusivity(unchecked) private(set) var instance: String
        @exclusivity(unchecked) private(set) var state: MessageState?
        @exclusivity(unchecked) private(set) var expires: NIODeadline
        let messages: BoundedCache<MessageKey, MessageState>

        init(instance: String, now: NIODeadline, messages: BoundedCache<MessageKey, MessageState>) {
            self.instance = instance
            self.expires = now + SPFCheck.messageLifetime
            self.messages = messages
        }

        /// Whether this is the message `instance` names.
        func holds(_ instance: String) -> Bool { Octets.equal(self.instance, instance) }

        /// The connection's next message begins.
        func begin(instance: String, now: NIODeadline) {
            self.instance = instance
            state = nil
            expires = now + SPFCheck.messageLifetime
        }

        func keep(_ state: MessageState, now: NIODeadline) {
            self.state = state
            expires = now + SPFCheck.messageLifetime
        }

        func connectionEnded() {
            let now = NIODeadline.now()
            guard let state, expires > now else { return }
            messages.insert(MessageKey(instance), state, cost: state.cost(instance: instance), expires: expires, now: now)
        }
    }

    /// How long one message's outcome and header flag are kept: as long as a transaction
    /// may reasonably take (smtpd allows 300 s per command).
    static let messageLifetime: TimeAmount = .minutes(15)

    public var testMode: Bool { settings.testMode }

    public var failVerdict: Verdict {
        let action = settings.actions[.temperror] ?? .dunno
        let values = [
            "result": "temperror", "domain": "the sender's domain", "client": "this client", "sender": "this sender",
            "helo": "", "identity": "mailfrom", "explanation": "", "why": settings.explanationURL ?? "",
        ]
        return Verdict(action.filled { values[$0] }, reason: "spf=temperror")
    }

    /// Bounds of the per-message cache: fixed (not from `result_cache_size`), so that every
    /// reload can hand the same cache on.
    static let messageEntries = 65_536
    static let messageBytes = 16 << 20

    /// `previous`: the check this one replaces on reload. Its per-message state is always
    /// kept, with a new verifier too, so a message in flight keeps its outcome and gets one
    /// header. `logLevel`: the level of the configuration it is built for (nil: the logger's).
    public init(settings: SPFSettings, verifier: SPFVerifier, logger: Logger = Logger(label: "backstop.spf"),
                logLevel: Logger.Level? = nil, previous: SPFCheck? = nil) {
        self.settings = settings
        self.verifier = verifier
        self.logger = logger
        logsOutcomes = (logLevel ?? logger.logLevel) <= .debug
        actions = SPFResult.allCases.map { settings.actions[$0] ?? .dunno }
        receiver = SPFHeader.Receiver(settings.receiver)
        reasons = SPFResult.allCases.flatMap { result in
            ["", " identity=helo"].flatMap { helo in ["", " cached"].map { "spf=\(result.rawValue)" + helo + $0 } }
        }
        messages = previous?.messages ?? BoundedCache(maxEntries: SPFCheck.messageEntries, maxBytes: SPFCheck.messageBytes, shards: 16)
    }

    /// Stops the verifier's workers when the check that replaces this one does not use them
    /// (after the evaluations in flight have had their time).
    public func retire(replacedBy successor: (any Check)?) {
        guard (successor as? SPFCheck)?.verifier !== verifier else { return }
        verifier.retire()
    }

    /// The server stops: the workers end now.
    public func stop() {
        verifier.shutdown()
    }

    /// Once their kills and reaps (off the event loops) are done, at most 2 s.
    public func stopped() async {
        await verifier.settled()
    }

    /// Stages that come before MAIL FROM: their requests carry no sender, and evaluating
    /// them would check postmaster@HELO as if every session were a bounce (RFC 7208 §2.4
    /// is for MAIL FROM:<> only).
    static func beforeMailFrom(_ state: ProtocolState) -> Bool {
        switch state {
        case .connect, .ehlo, .helo, .vrfy, .etrn: true
        case .mail, .rcpt, .data, .bdat, .endOfMessage, .other: false
        }
    }

    public func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        if Self.beforeMailFrom(request.protocolState) { return .now(.noOpinion("spf=skipped(before_mail_from)")) }
        if settings.skipAuthenticated && request.hasValue(.saslUsername) {
            return .now(.noOpinion("spf=skipped(authenticated)"))
        }
        let client = request.clientAddress
        guard let address = IPAddress(client) else { return .now(.noOpinion("spf=skipped(no_client_address)")) }
        if let skip = clientSkip(address, clientName: settings.trustedClientNames.isEmpty ? "" : request.clientName,
                                 helo: settings.trustedHeloNames.isEmpty ? "" : request.heloName) {
            return .now(.noOpinion("spf=skipped(\(skip))"))
        }
        if !settings.skipRecipients.isEmpty, SPFSettings.recipientListed(request.recipient, in: settings.skipRecipients) {
            return .now(skippedRecipient(request, client: client, context: context))
        }
        let sender = request.sender
        let helo = request.heloName
        if let skip = senderSkip(client: client, sender: sender, helo: helo) { return .now(.noOpinion("spf=skipped(\(skip))")) }
        let instance = request.instance
        let message = context.message
        // One clock reading for the message's state, the outcome cache and what is kept:
        // the request's own.
        let now = context.now
        if !instance.isEmpty,
           let state = messageState(instance, client: client, sender: sender, helo: helo, message: message, now: now) {
            return .now(verdict(for: state.evaluated, header: state.header))
        }
        let queries = self.queries(client: client, sender: sender, helo: helo, parsed: address)
        if let evaluated = cached(queries, now: now) {
            return .now(decided(consume evaluated, instance: instance, queries.mailfrom, message: message, logger: context.logger, now: now))
        }
        let deadline = context.deadline - .milliseconds(20)
        return .later(evaluations(queries, deadline: deadline, on: context.eventLoop) { evaluated in
            self.decided(evaluated, instance: instance, queries.mailfrom, message: message, logger: context.logger, settled: true)
        })
    }

    /// Why SPF is not evaluated for this client (a decision log reason), or nil: a trusted
    /// network, client name or HELO name.
    @inline(__always)
    func clientSkip(_ address: IPAddress, clientName: String, helo: String) -> String? {
        if settings.trustedNetworks.contains(address) { return "trusted_network" }
        if !settings.trustedClientNames.isEmpty, SPFSettings.nameListed(clientName, in: settings.trustedClientNames) {
            return "trusted_client_name"
        }
        if !settings.trustedHeloNames.isEmpty, SPFSettings.nameListed(helo, in: settings.trustedHeloNames) {
            return "trusted_helo_name"
        }
        return nil
    }

    /// Why SPF is not evaluated for this sender (skip_sender_domains), or nil.
    @inline(__always)
    func senderSkip(client: String, sender: String, helo: String) -> String? {
        guard !sender.isEmpty, !settings.skipSenderDomains.isEmpty,
              SPFSettings.listed(SPFQuery(clientAddress: client, sender: sender, helo: helo).domain, in: settings.skipSenderDomains)
        else { return nil }
        return "sender_domain"
    }

    /// The state of the message `instance` names, when it was evaluated for this client,
    /// sender and HELO. On a connection, the message becomes the one it holds. A connection
    /// that held another message looks no further: smtpd sends a message's requests one
    /// after another, so a message not seen on this connection began after the one it held
    /// and cannot have been decided elsewhere. Only a connection that held none (its first
    /// message, which may have begun on Postfix's previous connection) looks in what ended
    /// connections handed on. `arriving`: false for an evaluation that ended after its
    /// request (the connection may be on another message, which keeps the slot).
    private func messageState(_ instance: String, client: String, sender: String, helo: String,
                              message: ConnectionMessage?, now: NIODeadline, arriving: Bool = true) -> MessageState? {
        var state: MessageState?
        if let message, !message.isEnded {
            // The slot is read once (a read takes a reference and a cast).
            let memo = message.memo
            let slot = memo as AnyObject? as? HeldMessage
            if let held = slot, held.holds(instance) {
                guard held.expires > now else { return nil }
                state = held.state
            } else if !arriving {
                state = messages.value(MessageKey(instance), now: now)
            } else if let held = slot, held.messages === messages {
                held.begin(instance: instance, now: now)
            } else {
                let first = memo == nil
                let held = HeldMessage(instance: instance, now: now, messages: messages)
                message.memo = held
                if first, let found = messages.value(MessageKey(instance), now: now) {
                    held.keep(found, now: now)
                    state = found
                }
            }
        } else {
            state = messages.value(MessageKey(instance), now: now)
        }
        guard let state, state.isFor(client: client, sender: sender, helo: helo) else { return nil }
        return state
    }

    /// Keeps `state` as the message `instance` names: in the connection's slot while the
    /// connection is on that message; otherwise (no connection, it has ended, or the answer
    /// came after the connection went on to its next message) in `messages`.
    private func hold(_ state: MessageState, instance: String, in message: ConnectionMessage?, now: NIODeadline) {
        if let message, !message.isEnded, let held = heldMessage(message, instance) {
            held.keep(state, now: now)
        } else {
            messages.insert(MessageKey(instance), state, cost: state.cost(instance: instance), expires: now + SPFCheck.messageLifetime, now: now)
        }
    }

    /// The connection's slot, when it holds the message `instance` names.
    private func heldMessage(_ message: ConnectionMessage, _ instance: String) -> HeldMessage? {
        guard let held = message.memo as AnyObject? as? HeldMessage, held.holds(instance) else { return nil }
        return held
    }

    /// A recipient SPF never refuses (skip_recipients). When an earlier recipient of the
    /// message was evaluated and its header is still due (that recipient was refused), the
    /// header goes with this answer: the postmaster's copy of a message is the one that
    /// needs it. No evaluation is started for it.
    private func skippedRecipient(_ request: PolicyRequest, client: String, context: CheckContext) -> Verdict {
        let instance = request.instance
        guard !instance.isEmpty,
              let state = messageState(instance, client: client, sender: request.sender, helo: request.heloName,
                                       message: context.message, now: .now()),
              !state.header.isSent else {
            return .noOpinion("spf=skipped(recipient)")
        }
        return Verdict(.dunno, reason: "spf=skipped(recipient)", header: verdict(for: state.evaluated, header: state.header).header)
    }

    /// Logs the outcomes and remembers them for the message (`request`: the request's client,
    /// sender and HELO, as its MAIL FROM query holds them). `settled`: after an evaluation,
    /// when another recipient of the message may have been decided meanwhile (this one's
    /// answer came from the deadline, the next recipient's evaluation finished first): the
    /// message keeps that state, its outcome and whether its header was added.
    private func decided(_ evaluated: consuming SPFEvaluated, instance: String, _ request: SPFQuery, message: ConnectionMessage?,
                         logger: Logger, now: NIODeadline = .now(), settled: Bool = false) -> Verdict {
        log(evaluated, logger)
        guard !instance.isEmpty else { return verdict(for: evaluated, header: nil) }
        if settled, let state = messageState(instance, client: request.clientAddress, sender: request.sender, helo: request.helo,
                                             message: message, now: now, arriving: false) {
            return verdict(for: state.evaluated, header: state.header)
        }
        let state = MessageState(client: request.clientAddress, sender: request.sender, helo: request.helo)
        let verdict = verdict(for: evaluated, header: state.header)
        // The outcomes move into the message's state.
        state.keep(consume evaluated)
        hold(state, instance: instance, in: message, now: now)
        return verdict
    }

    /// The HELO query (when the HELO identity is checked) and the MAIL FROM query.
    func queries(client: String, sender: String, helo: String, parsed: IPAddress? = nil) -> (helo: SPFQuery?, mailfrom: SPFQuery) {
        let heloUsable = settings.heloCheck && !helo.isEmpty && SPFQuery.domainProblem(helo) == nil
        let parsed = parsed ?? IPAddress(client)
        // A HELO name too long to be one reaches a sender's evaluation only through %{h}: it
        // is left out there (as if none had been given) rather than making the sender's whole
        // result a permerror, which lets a forged sender through.
        let heloForSender = !sender.isEmpty && helo.utf8.count > SPFWire.maxHelo ? "" : helo
        // A bounce's MAIL FROM identity is postmaster@helo (RFC 7208 §2.4); still "mailfrom".
        return (heloUsable ? SPFQuery(clientAddress: client, sender: "", helo: helo, identity: .helo, parsed: parsed) : nil,
                SPFQuery(clientAddress: client, sender: sender, helo: heloForSender, identity: .mailfrom, parsed: parsed))
    }

    /// The outcomes for one message from the verifier's cache alone, or nil.
    @inline(__always)
    func cached(_ queries: (helo: SPFQuery?, mailfrom: SPFQuery), now: NIODeadline) -> SPFEvaluated? {
        // Built once, at the end, from what was found (filling in an empty one copied it).
        guard let heloQuery = queries.helo else {
            guard let outcome = verifier.cachedOutcome(queries.mailfrom, now: now) else { return nil }
            return SPFEvaluated(helo: nil, mailfrom: outcome)
        }
        guard let helo = verifier.cachedOutcome(heloQuery, now: now) else { return nil }
        if let same = SPFCheck.mailfromFromHelo(helo, queries.mailfrom) { return SPFEvaluated(helo: helo, mailfrom: same) }
        if helo.result == .fail { return SPFEvaluated(helo: helo, mailfrom: nil) }
        guard let outcome = verifier.cachedOutcome(queries.mailfrom, now: now) else { return nil }
        return SPFEvaluated(helo: helo, mailfrom: outcome)
    }

    /// The outcomes for one message, HELO first when configured, then MAIL FROM, and what
    /// `finish` makes of them: one future fewer per evaluation than mapping the result (each
    /// future costs NIO's run-time generic metadata, ~1,000 instructions).
    func evaluations<T: Sendable>(_ queries: (helo: SPFQuery?, mailfrom: SPFQuery), deadline: NIODeadline, on loop: any EventLoop,
                                  finish: @escaping @Sendable (SPFEvaluated) -> T) -> EventLoopFuture<T> {
        guard let heloQuery = queries.helo else {
            return verifier.evaluate(queries.mailfrom, deadline: deadline, on: loop).map { finish(SPFEvaluated(helo: nil, mailfrom: $0)) }
        }
        return verifier.evaluate(heloQuery, deadline: deadline, on: loop).flatMap { helo in
            if let same = SPFCheck.mailfromFromHelo(helo, queries.mailfrom) {
                return loop.makeSucceededFuture(finish(SPFEvaluated(helo: helo, mailfrom: same)))
            }
            if helo.result == .fail { return loop.makeSucceededFuture(finish(SPFEvaluated(helo: helo, mailfrom: nil))) }
            return self.verifier.evaluate(queries.mailfrom, deadline: deadline, on: loop).map { finish(SPFEvaluated(helo: helo, mailfrom: $0)) }
        }
    }

    /// A bounce's MAIL FROM identity is postmaster@helo, just evaluated: no second evaluation.
    static func mailfromFromHelo(_ helo: SPFOutcome, _ mailfrom: SPFQuery) -> SPFOutcome? {
        guard mailfrom.sender.isEmpty else { return nil }
        var same = helo
        same.query = mailfrom
        return same
    }

    // MARK: actions and headers

    func verdict(for evaluated: SPFEvaluated, header once: HeaderOnce?) -> Verdict {
        if evaluated.heloResult == .fail, let helo = evaluated.helo {
            return refusalOrHeader(helo, once: once, strict: false)
        }
        // Each outcome is read where it is: `a ?? b` would copy one.
        if let mailfrom = evaluated.mailfrom { return refusalOrHeader(mailfrom, once: once, strict: strict(mailfrom)) }
        guard let helo = evaluated.helo else { return .noOpinion("spf=none") }
        return refusalOrHeader(helo, once: once, strict: strict(helo))
    }

    /// A refusal whatever Postfix's later restrictions say: DEFER_IF_REJECT lets the mail through
    /// when nothing later rejects it, and DEFER_IF_PERMIT when nothing later permits it, so a
    /// strict domain's result answered with one of them is held to strict_action instead.
    static func refusesForCertain(_ action: PolicyAction) -> Bool {
        switch action {
        case .reject, .deferTemporarily, .reply: true
        default: false
        }
    }

    /// strict_domains name sender domains: a bounce has none (its HELO is checked as
    /// postmaster@helo), so a bounce from a strict domain's host is judged like any other.
    private func strict(_ outcome: SPFOutcome) -> Bool {
        outcome.query.identity == .mailfrom && !outcome.query.sender.isEmpty
            && SPFSettings.listed(outcome.query.domain, in: settings.strictDomains)
    }

    func refusalOrHeader(_ outcome: SPFOutcome, once: HeaderOnce?, strict: Bool) -> Verdict {
        var action = actions[outcome.result.index]
        var reason = reasons[outcome.result.index * 4 + (outcome.query.identity == .helo ? 2 : 0) + (outcome.cached ? 1 : 0)]
        if strict && outcome.result != .pass && outcome.result != .temperror && !Self.refusesForCertain(action) {
            action = settings.strictAction
            reason += " strict_domain"
        }
        // The header is due once per message; a refusal carries it too, for test mode.
        var due: DueHeader?
        if once?.isSent != true, let line = header(for: outcome) { due = DueHeader(line: line, once: once) }
        if action.isNoOpinion {
            if due == nil && once?.isSent == true { reason += " header_already_added" }
            return Verdict(.dunno, reason: reason, header: due)
        }
        return Verdict(action.filled { value($0, for: outcome) }, reason: reason, header: due)
    }

    /// What a placeholder of an action's text stands for (nil: not one of ours, left as
    /// written). Worked out only for the placeholders the text holds.
    func value(_ name: String, for outcome: SPFOutcome) -> String? {
        switch name {
        case "explanation":
            if let text = outcome.explanation { return ResponseEncoder.sanitise(text, limit: 200) }
            guard let url = settings.explanationURL else { return "" }
            return "See " + PolicyAction.fill(url) { urlValue($0, for: outcome) }
        case "why":
            guard let url = settings.explanationURL else { return "" }
            return PolicyAction.fill(url) { urlValue($0, for: outcome) }
        default:
            return plainValue(name, for: outcome)
        }
    }

    /// The same for an explanation URL: each value escaped for a URL.
    func urlValue(_ name: String, for outcome: SPFOutcome) -> String? {
        guard let plain = plainValue(name, for: outcome) else { return nil }
        if name == "result" || name == "identity" { return plain }
        return String(decoding: SPFMacroContext.urlEscape(Array(plain.utf8)), as: UTF8.self)
    }

    private func plainValue(_ name: String, for outcome: SPFOutcome) -> String? {
        switch name {
        case "result": outcome.result.rawValue
        case "domain": outcome.query.domain
        case "client": outcome.query.clientAddress
        case "sender": outcome.query.checkedMailbox
        case "helo": outcome.query.helo
        case "identity": outcome.query.identity.rawValue
        default: nil
        }
    }

    /// The header this outcome adds, without "PREPEND "; nil when headers are off.
    public func header(for outcome: SPFOutcome) -> String? {
        switch settings.header {
        case .none: return nil
        case .receivedSPF: return SPFHeader.receivedSPF(outcome, receiver: receiver)
        case .authenticationResults: return SPFHeader.authenticationResults(outcome, authservID: settings.authservID)
        }
    }

    func log(_ evaluated: SPFEvaluated, _ logger: Logger) {
        // The counts need the results only: an outcome is bound (copied) only to be logged.
        if let result = evaluated.heloResult { verifier.metrics.results[result.index].increment() }
        if let result = evaluated.mailfromResult { verifier.metrics.results[result.index].increment() }
        guard logsOutcomes else { return }
        if let helo = evaluated.helo { log(helo, logger) }
        if let mailfrom = evaluated.mailfrom { log(mailfrom, logger) }
    }

    private func log(_ outcome: SPFOutcome, _ logger: Logger) {
        logger.debug("spf result=\(outcome.result.rawValue) identity=\(outcome.query.identity.rawValue) domain=\(LogEscaping.field(outcome.query.domain)) client=\(LogEscaping.field(outcome.query.clientAddress)) mechanism=\(LogEscaping.field(outcome.mechanism ?? "-")) problem=\(LogEscaping.field(outcome.problem ?? "-")) lookups=\(outcome.lookups) cached=\(outcome.cached) elapsed_ms=\(outcome.elapsed.nanoseconds / 1_000_000)")
    }
}

/// The outcomes that decide one message.
public struct SPFEvaluated: Sendable {
    public var helo: SPFOutcome? { didSet { heloResult = helo?.result } }
    public var mailfrom: SPFOutcome? { didSet { mailfromResult = mailfrom?.result } }
    /// Their results, kept beside them: reading a result through the optional outcome
    /// copied the whole outcome first (~150 instructions and two reference counts a read,
    /// several reads per request).
    public private(set) var heloResult: SPFResult?
    public private(set) var mailfromResult: SPFResult?

    public init(helo: SPFOutcome? = nil, mailfrom: SPFOutcome? = nil) {
        self.helo = helo
        self.mailfrom = mailfrom
        heloResult = helo?.result
        mailfromResult = mailfrom?.result
    }

    var cost: Int { (helo?.cost ?? 0) + (mailfrom?.cost ?? 0) + 64 }
}
