// The "spf" check in the engine: actions and headers per result, one Received-SPF per
// message that is marked added only when an answer carrying it is written (a later check's
// refusal of that recipient must not lose it), test mode that keeps the header and logs the
// refusal, skip rules, the HELO identity, reload, a hostile explanation, the [spf] section.

import BackstopCore
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import BackstopSPF

private func request(sender: String, client: String = "198.51.100.7", helo: String = "mail.helo.example",
                     instance: String = "", recipient: String = "rcpt@local.example", sasl: String = "") -> PolicyRequest {
    PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", client),
                   ("sender", sender), ("helo_name", helo), ("instance", instance), ("recipient", recipient),
                   ("sasl_username", sasl)])
}

/// A check that refuses one recipient (as a recipient rate limit would).
final class RefuseRecipient: Check {
    let name = "ratelimit"
    let recipient: String
    let testMode: Bool
    init(recipient: String, testMode: Bool = false) {
        self.recipient = recipient
        self.testMode = testMode
    }
    var failVerdict: Verdict { .noOpinion() }
    func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict> {
        request.recipient == recipient ? .now(Verdict(.deferTemporarily("4.7.1 Rate limit exceeded"), reason: "limited")) : .now(.noOpinion())
    }
}

/// What the connection does with a decision: write it, and mark its header as added.
func written(_ decision: Decision) -> Decision {
    decision.headerOnce?.markSent()
    return decision
}

func isHeader(_ decision: Decision) -> Bool {
    if case .prepend(let line) = decision.action { return line.hasPrefix("Received-SPF:") }
    return false
}

@Suite(.serialized) struct SPFCheckTests {
    @Test func actionMappingAndHeaders() throws {
        var s = SPFSettings()
        s.receiver = "mx.test"
        s.authservID = "mx.test"
        s.explanationURL = "https://why.example/?d={domain}&ip={client}"
        let verifier = SPFVerifier(settings: s.verifier, executable: "/nonexistent")
        defer { verifier.shutdown() }
        let check = SPFCheck(settings: s, verifier: verifier)
        let query = SPFQuery(clientAddress: "192.0.2.10", sender: "a@pass.example", helo: "mail.pass.example")
        var pass = SPFOutcome(result: .pass, query: query, mechanism: "ip4:192.0.2.0/24")
        let header = try #require(check.header(for: pass))
        #expect(header == "Received-SPF: pass (mx.test: domain of a@pass.example designates 192.0.2.10 as permitted sender) client-ip=192.0.2.10; envelope-from=\"a@pass.example\"; helo=mail.pass.example; receiver=mx.test; identity=mailfrom; mechanism=\"ip4:192.0.2.0/24\";")
        let once = HeaderOnce()
        #expect(check.verdict(for: SPFEvaluated(mailfrom: pass), header: once) == Verdict(.dunno, reason: "spf=pass", header: DueHeader(line: header, once: once)))
        once.markSent()
        let again = check.verdict(for: SPFEvaluated(mailfrom: pass), header: once)
        #expect(again.action == .dunno && again.header == nil && again.reason == "spf=pass header_already_added")

        var fail = SPFOutcome(result: .fail, query: query, mechanism: "-all", explanation: "Not\r\nhere action=OK")
        let refused = check.verdict(for: SPFEvaluated(mailfrom: fail), header: nil)
        #expect(refused.reason == "spf=fail")
        #expect(refused.header?.line.hasPrefix("Received-SPF: fail (") == true, "a refusal carries the header test mode adds")
        guard case .reply(550, "5.7.23", let text) = refused.action else { Issue.record("\(refused.action)"); return }
        #expect(text.contains("SPF fail") && text.contains("pass.example") && text.contains("192.0.2.10"))
        let wire = String(decoding: ResponseEncoder.encode(refused.action), as: UTF8.self)
        #expect(wire.split(separator: "\n").filter { $0.hasPrefix("action=") }.count == 1)
        #expect(wire.hasSuffix("\n\n") && wire.dropLast(2).allSatisfy { $0 != "\n" && $0 != "\r" })
        fail.explanation = nil
        let withURL = ResponseEncoder.actionText(check.verdict(for: SPFEvaluated(mailfrom: fail), header: nil).action)
        #expect(withURL.contains("https://why.example/?d=pass.example&ip=192.0.2.10"))
        let temp = check.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .temperror, query: query)), header: nil)
        #expect(ResponseEncoder.actionText(temp.action).hasPrefix("DEFER_IF_PERMIT 4.7.24 SPF temperror"))
        let perm = check.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .permerror, query: query)), header: nil)
        #expect(perm.action == .dunno && perm.header?.line.hasPrefix("Received-SPF: permerror (") == true)

        var strictSettings = s
        strictSettings.strictDomains = ["pass.example"]
        strictSettings.actions[.permerror] = try PolicyAction(parsing: "550 5.7.24 SPF permerror for {domain}")
        strictSettings.header = .authenticationResults
        let strict = SPFCheck(settings: strictSettings, verifier: verifier)
        let soft = strict.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .softfail, query: query)), header: nil)
        #expect(soft.action.keyword == "550" && soft.reason == "spf=softfail strict_domain")
        // An action that refuses only if Postfix's later restrictions agree is no refusal for
        // a strict domain: DEFER_IF_REJECT lets the mail through when nothing rejects it.
        var maybe = strictSettings
        maybe.actions[.softfail] = .deferIfReject("4.7.1 softfail")
        let maybeSoft = SPFCheck(settings: maybe, verifier: verifier).verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .softfail, query: query)), header: nil)
        #expect(maybeSoft.action.keyword == "550" && maybeSoft.reason == "spf=softfail strict_domain", "\(maybeSoft)")
        SPFSettings.register()
        do {
            _ = try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\nstrict_action = \"DEFER_IF_REJECT no\"\n", file: "x.toml")
            Issue.record("strict_action = DEFER_IF_REJECT was accepted")
        } catch {
            let messages = error.issues.map(\.description)
            #expect(messages.contains { $0.contains("spf.strict_action: must refuse") }, "\(messages)")
        }
        // A bounce from a strict domain's host (no SPF for the host name) is not a sender of
        // that domain: it gets the ordinary action for none, not the strict refusal.
        let bounce = SPFQuery(clientAddress: "192.0.2.10", sender: "", helo: "mx1.pass.example")
        let bounceNone = strict.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .none, query: bounce)), header: nil)
        #expect(bounceNone.action == .dunno && !bounceNone.reason.contains("strict_domain"), "\(bounceNone)")
        // The refusal says which result it was, not "fail".
        let neutral = strict.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .neutral, query: query)), header: nil)
        let neutralText = ResponseEncoder.actionText(neutral.action)
        #expect(neutralText.hasPrefix("550 5.7.23 SPF neutral: pass.example requires an SPF pass for its mail") && !neutralText.contains("fail"), "\(neutralText)")
        #expect(strict.verdict(for: SPFEvaluated(mailfrom: SPFOutcome(result: .permerror, query: query)), header: nil).action
                == .reply(code: 550, enhanced: "5.7.24", text: "SPF permerror for pass.example"))
        pass.query = SPFQuery(clientAddress: "192.0.2.10", sender: "a@pass.example", helo: "we\"ird (helo)")
        #expect(strict.header(for: pass) == "Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@pass.example")
        #expect(SPFHeader.receivedSPF(pass, receiver: "mx.test").contains("helo=\"we\\\"ird (helo)\";"))
        #expect(SPFHeader.comment(pass, receiver: "mx.test") == "mx.test: domain of a@pass.example designates 192.0.2.10 as permitted sender")
    }

    /// An 8-bit HELO is not written raw: a name in U-labels appears in its A-label form (what
    /// SPF looked up), other 8-bit text leaves the field out, and a comment shows "?".
    @Test func anEightBitHeloIsNotWrittenRaw() {
        let idn = SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "192.0.2.1", sender: "a@pass.example", helo: "Mail.Bücher.example"))
        let idnLine = SPFHeader.receivedSPF(idn, receiver: "mx.test")
        #expect(idnLine.contains(" helo=mail.xn--bcher-kva.example;"), "\(idnLine)")
        #expect(idnLine.utf8.allSatisfy { $0 < 0x80 }, "\(idnLine)")
        let heloIdentity = SPFOutcome(result: .none, query: SPFQuery(clientAddress: "192.0.2.1", sender: "", helo: "bücher.example", identity: .helo))
        #expect(SPFHeader.comment(heloIdentity, receiver: "mx.test") == "mx.test: domain xn--bcher-kva.example does not designate permitted sender hosts")
        #expect(SPFHeader.authenticationResults(heloIdentity, authservID: "mx.test")
                == "Authentication-Results: mx.test; spf=none smtp.helo=xn--bcher-kva.example")
        // 8-bit text that is no domain name (a label of 70 code points cannot be an A-label).
        let junk = String(repeating: "ü", count: 70) + ".example"
        let junkLine = SPFHeader.receivedSPF(SPFOutcome(result: .none, query: SPFQuery(clientAddress: "192.0.2.1", sender: "", helo: junk, identity: .helo)),
                                             receiver: "mx.test")
        #expect(junkLine.utf8.allSatisfy { $0 < 0x80 }, "\(junkLine)")
        #expect(!junkLine.contains("helo=") && junkLine.contains("domain ??"), "\(junkLine)")
        #expect(SPFHeader.authenticationResults(SPFOutcome(result: .none, query: SPFQuery(clientAddress: "192.0.2.1", sender: "", helo: junk, identity: .helo)),
                                                authservID: "mx.test") == "Authentication-Results: mx.test; spf=none")
        // Converts, but not to a host name (a space): left out too.
        let spaced = SPFHeader.receivedSPF(SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "192.0.2.1", sender: "a@pass.example", helo: "ünknown host")),
                                           receiver: "mx.test")
        #expect(!spaced.contains("helo=") && spaced.utf8.allSatisfy { $0 < 0x80 }, "\(spaced)")
    }

    /// A client's long sender or HELO cannot make the line longer than a header may be (the
    /// encoder would cut it anywhere): the comment goes, then the long values, and what is
    /// left is a whole line whose fields are right.
    @Test func longValuesLeaveAWholeReceivedSPFLine() {
        let long = String(repeating: "a", count: 900) + "@evil.example"
        let line = SPFHeader.receivedSPF(SPFOutcome(result: .softfail, query: SPFQuery(clientAddress: "192.0.2.1", sender: long, helo: "mx.evil.example")),
                                         receiver: "mx.test")
        #expect(line.utf8.count <= ResponseEncoder.maxHeaderLine)
        #expect(line == "Received-SPF: softfail client-ip=192.0.2.1; helo=mx.evil.example; receiver=mx.test; identity=mailfrom;", "\(line)")
        // Short enough without the comment: the values stay.
        let middle = String(repeating: "b", count: 450) + "@evil.example"
        let kept = SPFHeader.receivedSPF(SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "192.0.2.1", sender: middle, helo: "mx.evil.example")),
                                         receiver: "mx.test")
        #expect(kept == "Received-SPF: pass client-ip=192.0.2.1; envelope-from=\"\(middle)\"; helo=mx.evil.example; receiver=mx.test; identity=mailfrom;")
        // Both long: neither is kept, and the line still ends whole.
        let both = SPFHeader.receivedSPF(SPFOutcome(result: .fail, query: SPFQuery(clientAddress: "192.0.2.1", sender: long, helo: String(repeating: "h", count: 600))),
                                         receiver: "mx.test")
        #expect(both == "Received-SPF: fail client-ip=192.0.2.1; receiver=mx.test; identity=mailfrom;")
        #expect(SPFHeader.authenticationResults(SPFOutcome(result: .fail, query: SPFQuery(clientAddress: "192.0.2.1", sender: "b" + long + long, helo: "h.example")),
                                                authservID: "mx.test") == "Authentication-Results: mx.test; spf=fail")
        // `backstop spf` prints the mechanism a worker named: a taken-over worker's escapes are not passed on.
        let report = SPFReport.describe(SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "192.0.2.1", sender: "a@b.example", helo: "h"),
                                                   mechanism: "ip4:\u{1B}[2J\u{1B}]0;owned\u{07}"), header: nil)
        #expect(!report.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "\(report)")
        // A client address with a long IPv6 zone is written as the address SPF checked.
        let zoned = SPFHeader.receivedSPF(SPFOutcome(result: .fail, query: SPFQuery(clientAddress: "fe80::1%" + String(repeating: "\"", count: 900),
                                                                                      sender: long, helo: "h.example")), receiver: "mx.test")
        #expect(zoned == "Received-SPF: fail client-ip=\"fe80::1\"; helo=h.example; receiver=mx.test; identity=mailfrom;", "\(zoned)")
        #expect(SPFQuery(clientAddress: "fe80::1%" + String(repeating: "\"", count: 900), sender: "", helo: "").client != nil)
        // An ordinary line keeps its comment.
        #expect(SPFHeader.receivedSPF(SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "192.0.2.1", sender: "a@b.example", helo: "h.example")),
                                      receiver: "mx.test").hasPrefix("Received-SPF: pass (mx.test: domain of a@b.example designates"))
    }

    /// The check's tables are indexed by `SPFResult.index`: it must follow `allCases`, and
    /// the reasons must read as the decision log documents them.
    @Test func tablesByResultFollowTheResults() throws {
        for (position, result) in SPFResult.allCases.enumerated() { #expect(result.index == position) }
        var settings = SPFSettings()
        settings.actions[.neutral] = try PolicyAction(parsing: "550 5.7.23 neutral")
        settings.actions[.softfail] = try PolicyAction(parsing: "PREPEND X-Softfail: yes")
        let verifier = SPFVerifier(settings: settings.verifier, executable: "/nonexistent")
        defer { verifier.shutdown() }
        let check = SPFCheck(settings: settings, verifier: verifier)
        for result in SPFResult.allCases { #expect(check.actions[result.index] == settings.actions[result], "\(result)") }
        #expect(check.reasons[SPFResult.temperror.index * 4 + 3] == "spf=temperror identity=helo cached")
        #expect(check.reasons[SPFResult.pass.index * 4] == "spf=pass")
        #expect(check.reasons[SPFResult.none.index * 4 + 1] == "spf=none cached")
    }

    /// SPFEvaluated keeps each outcome's result beside it (read without copying the outcome):
    /// it follows every change of the outcomes, made whole or through them.
    @Test func evaluatedResultsFollowTheirOutcomes() {
        let query = SPFQuery(clientAddress: "192.0.2.1", sender: "a@example.org", helo: "mail.example.org")
        var evaluated = SPFEvaluated(mailfrom: SPFOutcome(result: .pass, query: query))
        #expect(evaluated.heloResult == nil && evaluated.mailfromResult == .pass)
        evaluated.mailfrom?.result = .softfail
        #expect(evaluated.mailfromResult == .softfail)
        evaluated.helo = SPFOutcome(result: .fail, query: query.with(identity: .helo))
        #expect(evaluated.heloResult == .fail)
        evaluated.mailfrom = nil
        #expect(evaluated.mailfromResult == nil && evaluated.heloResult == .fail)
    }

    /// Received-SPF values are a dot-atom or a quoted-string (RFC 7208 §9.1): an IPv6
    /// address and anything with "@" or ":" are quoted. Authentication-Results keeps a
    /// domain name and local-part@domain as they are (RFC 8601 §2.2) and quotes the rest.
    @Test func headerValuesFollowTheirGrammars() {
        let v6 = SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "2001:db8::25", sender: "a@example.org", helo: "odd@helo:x"))
        let line = SPFHeader.receivedSPF(v6, receiver: .init("mx.test"), comment: false, longest: .max)
        #expect(line == "Received-SPF: pass client-ip=\"2001:db8::25\"; envelope-from=\"a@example.org\"; helo=\"odd@helo:x\"; receiver=mx.test; identity=mailfrom;",
                "\(line)")
        func ar(_ sender: String, helo: String = "mail.example.org", identity: SPFIdentity = .mailfrom) -> String {
            SPFHeader.authenticationResults(SPFOutcome(result: .pass, query: SPFQuery(clientAddress: "192.0.2.1", sender: sender, helo: helo,
                                                                                      identity: identity)), authservID: "mx.test")
        }
        #expect(ar("first.last+tag@example.org") == "Authentication-Results: mx.test; spf=pass smtp.mailfrom=first.last+tag@example.org")
        #expect(ar("a..b@example.org") == "Authentication-Results: mx.test; spf=pass smtp.mailfrom=\"a..b@example.org\"")
        #expect(ar("a@exa_mple.org") == "Authentication-Results: mx.test; spf=pass smtp.mailfrom=\"a@exa_mple.org\"")
        #expect(ar("", helo: "helo:x.example", identity: .helo) == "Authentication-Results: mx.test; spf=pass smtp.helo=\"helo:x.example\"")
        #expect(ar("", helo: "Mail-1.Example.org", identity: .helo) == "Authentication-Results: mx.test; spf=pass smtp.helo=Mail-1.Example.org")
    }

    /// The header is written into storage sized beforehand: values made only of the octets
    /// that quoting doubles (the worst case) still fit, and every value is escaped as
    /// RFC 5322 wants; the atom bit masks hold exactly atext plus ".".
    @Test func headersFitTheirStorageWhateverTheValues() {
        let nasty = String(repeating: "\"\\", count: 400)
        var outcome = SPFOutcome(result: .neutral, query: SPFQuery(clientAddress: nasty, sender: nasty + "@" + nasty, helo: nasty))
        outcome.mechanism = nasty
        let line = SPFHeader.receivedSPF(outcome, receiver: .init(nasty), comment: true, longest: .max)
        let escaped = String(repeating: "\\\"\\\\", count: 400)
        #expect(line.contains("client-ip=\"\(escaped)\";") && line.contains("receiver=\"\(escaped)\";"))
        #expect(line.contains("mechanism=\"\(escaped)\";"))
        let commented = String(repeating: "\"_", count: 400)
        #expect(line.hasPrefix("Received-SPF: neutral (" + commented + ": " + commented + " is neither permitted nor denied by domain of "))
        var helo = outcome
        helo.query = SPFQuery(clientAddress: nasty, sender: "", helo: nasty, identity: .helo)
        #expect(SPFHeader.authenticationResults(helo, authservID: nasty, property: true).hasSuffix("smtp.helo=\"\(escaped)\""))
        #expect(SPFHeader.comment(helo, receiver: nasty) == commented + ": " + commented + " is neither permitted nor denied by domain " + commented)
        let atext = Set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-/=?^_`{|}~.".utf8)
        for octet in UInt8.min...UInt8.max {
            #expect(DotAtom.isAtomOctet(octet) == atext.contains(octet), "octet \(octet)")
        }
    }

    /// Administrators' issue: the header goes to the first recipient that reaches SPF; when
    /// a later check refuses that recipient, the next accepted one must still carry it.
    @Test func aRefusedRecipientDoesNotTakeTheHeaderWithIt() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let spf = try makeCheck(checkSettings(dns))
        defer { spf.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [spf, RefuseRecipient(recipient: "walter@local.example")]])
        func ask(_ recipient: String) async throws -> Decision {
            written(try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "msg1", recipient: recipient)))
        }
        let walter = try await ask("walter@local.example")
        #expect(walter.action.keyword == "DEFER" && walter.check == "ratelimit")
        let victor = try await ask("victor@local.example")
        #expect(isHeader(victor), "the accepted recipient must carry the header: \(victor.action)")
        let third = try await ask("third@local.example")
        #expect(third.action == .dunno && third.reason.contains("header_already_added"))
        // A header is only added when the answer is written: one never written leaves it due.
        let unsent = try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "msg2", recipient: "x@local.example"))
        #expect(isHeader(unsent))
        #expect(isHeader(try await ask2(engine, "msg2")))
    }

    private func ask2(_ engine: PolicyEngine, _ instance: String) async throws -> Decision {
        written(try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: instance, recipient: "y@local.example")))
    }

    /// Test mode keeps the header: a refusal of another check or of SPF itself is logged
    /// (test_mode_would) and the answer is the header that is due.
    @Test func testModeKeepsTheHeader() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let spf = try makeCheck(checkSettings(dns))
        defer { spf.verifier.shutdown() }
        let limited = PolicyEngine(stages: [.rcpt: [spf, RefuseRecipient(recipient: "walter@local.example", testMode: true)]])
        let d = written(try await decide(limited, request(sender: "a@pass.example", client: "192.0.2.10", instance: "t1", recipient: "walter@local.example")))
        #expect(isHeader(d) && d.wouldHave?.keyword == "DEFER" && d.check == "ratelimit")
        var testing = checkSettings(dns)
        testing.testMode = true
        let spfTest = try makeCheck(testing, previous: spf)
        let engine = PolicyEngine(stages: [.rcpt: [spfTest]])
        let fail = written(try await decide(engine, request(sender: "a@pass.example", client: "198.51.100.1", instance: "t2")))
        guard case .prepend(let line) = fail.action else { Issue.record("\(fail.action)"); return }
        #expect(line.hasPrefix("Received-SPF: fail ("))
        #expect(fail.wouldHave?.keyword == "550" && fail.reason == "spf=fail")
        // Global test mode, no header style: WARN as before.
        var quiet = checkSettings(dns)
        quiet.header = .none
        let plain = PolicyEngine(stages: [.rcpt: [try makeCheck(quiet, previous: spf)]], testMode: true)
        let warn = try await decide(plain, request(sender: "a@pass.example", client: "198.51.100.1", instance: "t3"))
        guard case .warn = warn.action else { Issue.record("\(warn.action)"); return }
    }

    @Test func oneEvaluationPerMessage() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let check = try makeCheck(checkSettings(dns))
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        await dns.command("reset")
        // Postfix asks about a message's recipients one after another.
        var decisions: [Decision] = []
        for n in 0..<50 {
            decisions.append(written(try await decide(engine, request(sender: "a@pass.example", client: "192.0.2.10", instance: "4a1b.2c3d",
                                                                     recipient: "user\(n)@local.example"))))
        }
        #expect(decisions.filter(isHeader).count == 1 && isHeader(decisions[0]))
        #expect(decisions.filter { $0.action == .dunno }.count == 49)
        // The recipient never appears in the header (pypolicyd-spf's BCC leak).
        if case .prepend(let header) = decisions[0].action { #expect(!header.contains("local.example")) }
        #expect(check.verifier.evaluationCount == 1)
        #expect(await dns.queryCount() == 1)
        // Another message from the same client and sender: no new evaluation, its own header.
        let other = written(try await decide(engine, request(sender: "b@pass.example", client: "192.0.2.10", instance: "other")))
        #expect(isHeader(other) && other.reason == "spf=pass cached")
        #expect(check.verifier.evaluationCount == 1)
    }

    @Test func reloadKeepsVerifierAndMessages() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let s = checkSettings(dns)
        let first = try makeCheck(s)
        let r1 = written(try await decide(PolicyEngine(stages: [.rcpt: [first]]), request(sender: "a@pass.example", client: "192.0.2.10", instance: "r1")))
        #expect(isHeader(r1))
        var changed = s
        changed.actions[.permerror] = .reply(code: 550, enhanced: "5.7.24", text: "x")
        // A request deadline that leaves checkSettings' 10 s evaluation deadline as it is (the
        // evaluation must end a fifth of it earlier): changed settings would start a verifier.
        let policyDeadline = TimeAmount.milliseconds(12_500)
        let second = try #require(try changed.makeCheck(CheckBuildContext(logger: testLogger, previous: first, deadline: policyDeadline)) as? SPFCheck)
        #expect(second.verifier === first.verifier)
        first.retire(replacedBy: second)  // keeps the shared verifier
        let r2 = try await decide(PolicyEngine(stages: [.rcpt: [second]]),
                                  request(sender: "a@pass.example", client: "192.0.2.10", instance: "r1", recipient: "x@local.example"))
        #expect(r2.action == .dunno)
        var resized = s
        resized.verifier.workers = 3
        let third = try #require(try resized.makeCheck(CheckBuildContext(logger: testLogger, previous: second, deadline: policyDeadline)) as? SPFCheck)
        defer { third.verifier.shutdown() }
        #expect(third.verifier !== first.verifier)
        // A new verifier keeps the messages too: r1's header was added, none comes again.
        let r3 = try await decide(PolicyEngine(stages: [.rcpt: [third]]),
                                  request(sender: "a@pass.example", client: "192.0.2.10", instance: "r1", recipient: "y@local.example"))
        #expect(r3.action == .dunno && r3.reason == "spf=pass header_already_added")
        #expect(third.verifier.evaluationCount == 0)
        let pid = try #require(await first.verifier.workerProcessIDs.first)
        second.retire(replacedBy: third)  // after the evaluation deadline (4 s) and a second
        for _ in 0..<8 where processState(pid) != nil { await waitUntilGone(pid) }
        #expect(processState(pid) == nil, "the replaced verifier's worker is still running")
    }

    @Test func hostileExplanationGivesOneResponse() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let check = try makeCheck(checkSettings(dns))
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        for sender in ["a@hostile.example", "action=OK@hostile2.example"] {
            let d = try await decide(engine, request(sender: sender, instance: sender))
            #expect(d.reason == "spf=fail")
            let wire = String(decoding: ResponseEncoder.encode(d.action), as: UTF8.self)
            #expect(wire.split(separator: "\n", omittingEmptySubsequences: false).filter { $0.hasPrefix("action=") }.count == 1)
            #expect(wire.filter { $0 == "\n" }.count == 2 && wire.hasSuffix("\n\n") && !wire.contains("\r"))
            #expect(wire.hasPrefix("action=550 5.7.23 SPF fail"))
        }
    }

    @Test func skipRules() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        var s = checkSettings(dns)
        s.trustedNetworks = NetworkList([CIDR("127.0.0.0/8")!, CIDR("172.17.0.0/16")!])
        s.skipSenderDomains = ["pass.example"]
        s.trustedClientNames = [".outbound.forwarder.example", "backup-mx.example.net"]
        s.trustedHeloNames = ["relay.internal.example"]
        s.skipRecipients = ["postmaster@", "abuse@local.example", "@open.example"]
        let check = try makeCheck(s)
        defer { check.verifier.shutdown() }
        let context = CheckContext(eventLoop: MultiThreadedEventLoopGroup.singleton.next(), deadline: .now() + .seconds(5), logger: testLogger)
        func reason(_ r: PolicyRequest) -> String {
            if case .now(let verdict) = check.evaluate(r, context: context), verdict.isNoOpinion, verdict.header == nil { return verdict.reason }
            return "evaluated"
        }
        #expect(reason(request(sender: "a@hostile.example", sasl: "alice")) == "spf=skipped(authenticated)")
        #expect(reason(request(sender: "a@hostile.example", client: "172.17.0.1")) == "spf=skipped(trusted_network)")
        #expect(reason(request(sender: "a@hostile.example", client: "::ffff:127.0.0.1")) == "spf=skipped(trusted_network)")
        #expect(reason(request(sender: "a@sub.pass.example")) == "spf=skipped(sender_domain)")
        func named(_ name: String) -> PolicyRequest {
            PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", "198.51.100.7"),
                           ("sender", "a@hostile.example"), ("helo_name", "mail.helo.example"), ("client_name", name),
                           ("recipient", "rcpt@local.example")])
        }
        #expect(reason(named("mail-1.outbound.forwarder.example")) == "spf=skipped(trusted_client_name)")
        #expect(reason(named("Backup-MX.example.net.")) == "spf=skipped(trusted_client_name)")
        #expect(reason(request(sender: "a@hostile.example", helo: "relay.internal.example")) == "spf=skipped(trusted_helo_name)")
        // Before MAIL FROM there is no sender: the session is not a bounce, and nothing is
        // evaluated (postmaster@HELO was checked, and its fail refused the client).
        for state in ["CONNECT", "EHLO", "HELO", "VRFY", "ETRN"] {
            let early = PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", state), ("client_address", "198.51.100.7"),
                                       ("sender", ""), ("helo_name", "mail.helo.example")])
            #expect(reason(early) == "spf=skipped(before_mail_from)", "\(state)")
        }
        SPFSettings.register()
        let warned = try Configuration.parse("[policy]\nehlo = [\"spf\"]\nrcpt = [\"spf\"]\n[spf]\n", file: "s.toml").warnings.map(\.description)
        #expect(warned == ["s.toml:4: spf: policy.ehlo lists spf, but EHLO comes before MAIL FROM: SPF is never evaluated there (it would check every session as a bounce); list spf in policy.rcpt"], "\(warned)")
        #expect(reason(request(sender: "a@hostile.example", recipient: "Postmaster@anything.example")) == "spf=skipped(recipient)")
        #expect(reason(request(sender: "a@hostile.example", recipient: "abuse@local.example")) == "spf=skipped(recipient)")
        #expect(reason(request(sender: "a@hostile.example", recipient: "anyone@open.example")) == "spf=skipped(recipient)")
        #expect(check.verifier.evaluationCount == 0)
        // Near misses are checked.
        #expect(reason(named("outbound.forwarder.example.evil.example")) == "evaluated")
        #expect(reason(named("unknown")) == "evaluated")
        #expect(reason(request(sender: "a@hostile.example", instance: "m9", recipient: "abuse@elsewhere.example")) == "evaluated")
        #expect(reason(request(sender: "a@hostile.example")) == "evaluated")
    }

    /// Domains written in U-labels match the A-label form SPF compares (they never matched:
    /// an exempted IDN domain was evaluated, a strict one not held to it), and a recipient
    /// without a domain (RCPT TO:<postmaster>) matches a `postmaster@` entry.
    @Test func internationalDomainsAndABarePostmasterMatchTheirLists() throws {
        SPFSettings.register()
        let config = try Configuration.parse("""
            [policy]
            rcpt = ["spf"]
            [spf]
            skip_sender_domains = ["Bücher.example"]
            strict_domains = ["straße.example"]
            trusted_helo_names = [".ÉCOLE.example"]
            skip_recipients = ["postmaster@", "abuse@Müller.example"]
            """, file: "i.toml")
        let s = try #require(config.checks["spf"] as? SPFSettings)
        #expect(SPFSettings.listed("xn--bcher-kva.example", in: s.skipSenderDomains))
        #expect(SPFSettings.listed("mail.xn--bcher-kva.example", in: s.skipSenderDomains))
        #expect(SPFSettings.listed("bücher.example", in: s.skipSenderDomains))
        #expect(SPFSettings.listed("xn--strae-oqa.example", in: s.strictDomains))
        #expect(SPFSettings.nameListed("mx.xn--cole-9oa.example", in: s.trustedHeloNames))
        #expect(SPFSettings.recipientListed("postmaster", in: s.skipRecipients))
        #expect(SPFSettings.recipientListed("Abuse@xn--mller-kva.example", in: s.skipRecipients))
        #expect(SPFSettings.recipientListed("abuse@müller.example", in: s.skipRecipients))
        #expect(!SPFSettings.recipientListed("abuse", in: s.skipRecipients))
        // The domain starts after the "@" octet, not after the Character it makes with a
        // mark (which put the mark on the local part's side, and the domain into A-labels).
        #expect(SPFSettings.recipientListed("abuse@\u{301}müller.example", in: ["@\u{301}müller.example"]))
        #expect(!SPFSettings.listed("xn--bcher-kva.example.evil", in: s.skipSenderDomains))
    }

    /// A skipped recipient is never refused by SPF, and carries the message's header when
    /// an earlier recipient of the message was refused (its answer did not carry it).
    @Test func aSkippedRecipientCarriesTheHeaderStillDue() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        var s = checkSettings(dns)
        s.skipRecipients = ["postmaster@"]
        let spf = try makeCheck(s)
        defer { spf.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [spf]])
        func ask(_ instance: String, _ recipient: String) async throws -> Decision {
            written(try await decide(engine, request(sender: "a@pass.example", client: "198.51.100.1", instance: instance, recipient: recipient)))
        }
        // SPF fail: the first recipient is refused, the postmaster gets the message and its header.
        let refused = try await ask("m1", "user@local.example")
        #expect(refused.action.keyword == "550", "\(refused.action)")
        let postmaster = try await ask("m1", "postmaster@local.example")
        guard case .prepend(let line) = postmaster.action else { Issue.record("\(postmaster.action)"); return }
        #expect(line.hasPrefix("Received-SPF: fail (") && postmaster.reason == "spf=skipped(recipient)", "\(line) \(postmaster.reason)")
        // Once added, not again; and a message whose first recipient is the postmaster has no
        // outcome yet: nothing is evaluated for it.
        #expect(try await ask("m1", "postmaster@other.example").action == .dunno)
        let before = spf.verifier.evaluationCount
        #expect(try await ask("m2", "postmaster@local.example").action == .dunno)
        #expect(spf.verifier.evaluationCount == before)
    }

    /// Two recipients of one message evaluated at once (the first one's answer came from the
    /// deadline while its evaluation went on): the later to finish keeps the message's
    /// state, so a header already added is not added again.
    @Test func aLateEvaluationKeepsTheMessagesState() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone, delayMilliseconds: 300)
        defer { dns.stop() }
        let spf = try makeCheck(checkSettings(dns))
        defer { spf.verifier.shutdown() }
        let context = CheckContext(eventLoop: MultiThreadedEventLoopGroup.singleton.next(), deadline: .now() + .seconds(10), logger: testLogger)
        func later(_ recipient: String) throws -> EventLoopFuture<Verdict> {
            guard case .later(let future) = spf.evaluate(request(sender: "a@pass.example", client: "192.0.2.10", instance: "late1",
                                                                 recipient: recipient), context: context) else {
                throw TestError("answered at once")
            }
            return future
        }
        let first = try later("one@local.example"), second = try later("two@local.example")
        let (a, b) = (try await first.get(), try await second.get())
        let headers = [a.header, b.header].compactMap { $0 }
        #expect(headers.count == 2 && headers[0].once === headers[1].once, "one message, one state: \(headers)")
        headers.first?.once?.markSent()
        guard case .now(let third) = spf.evaluate(request(sender: "a@pass.example", client: "192.0.2.10", instance: "late1",
                                                          recipient: "three@local.example"), context: context) else {
            Issue.record("the message's state was not kept"); return
        }
        #expect(third.header == nil && third.reason.contains("header_already_added"), "\(third)")
    }

    /// A Postfix connection holds the message it is on (ConnectionMessage): its recipients
    /// find the message's state there, not in the shared per-message cache; when the
    /// connection ends, the state is handed to that cache, so the message's next recipient on
    /// Postfix's next connection does not get a second header. An evaluation that ends after
    /// the connection went on to another message leaves that message in the slot.
    @Test func aConnectionHoldsItsMessageAndHandsItOnWhenItEnds() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone, delayMilliseconds: 300)
        defer { dns.stop() }
        let spf = try makeCheck(checkSettings(dns))
        defer { spf.verifier.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        // As the connection calls it: on its event loop.
        func evaluate(_ instance: String, _ recipient: String, client: String = "192.0.2.10", on message: ConnectionMessage) async throws -> Verdict {
            let context = CheckContext(eventLoop: loop, deadline: .now() + .seconds(10), logger: testLogger, message: message)
            let answer = try await loop.submit {
                spf.evaluate(request(sender: "a@pass.example", client: client, instance: instance, recipient: recipient), context: context)
            }.get()
            switch answer {
            case .now(let verdict): return verdict
            case .later(let future): return try await future.get()
            }
        }
        func cached(_ instance: String) -> SPFCheck.MessageState? { spf.messages.value(SPFCheck.MessageKey(instance), now: .now()) }

        let first = ConnectionMessage()
        let one = try await evaluate("c1", "one@local.example", on: first)
        let header = try #require(one.header, "\(one)")
        header.once?.markSent()
        let two = try await evaluate("c1", "two@local.example", on: first)
        #expect(two.header == nil && two.reason.contains("header_already_added"), "\(two)")
        #expect(cached("c1") == nil, "the connection holds its message itself")
        try await loop.submit { first.ended() }.get()
        #expect(cached("c1") != nil, "an ended connection hands its message on")
        let second = ConnectionMessage()
        let three = try await evaluate("c1", "three@local.example", on: second)
        #expect(three.header == nil && three.reason.contains("header_already_added"), "next connection: \(three)")

        // A late answer: the evaluation of l1 (a domain not yet asked for: 300 ms of DNS)
        // ends after the connection has gone on to l2, answered from the outcome cache. Both
        // requests arrive in one turn of the event loop, which also delivers l1's answer:
        // l1 cannot end first, however slowly this test's task is resumed.
        let third = ConnectionMessage()
        let context = CheckContext(eventLoop: loop, deadline: .now() + .seconds(10), logger: testLogger, message: third)
        let (late, next) = try await loop.submit {
            (spf.evaluate(request(sender: "a@soft.example", client: "192.0.2.77", instance: "l1", recipient: "one@local.example"), context: context),
             spf.evaluate(request(sender: "a@pass.example", client: "192.0.2.10", instance: "l2", recipient: "one@local.example"), context: context))
        }.get()
        guard case .later(let lateFuture) = late else { Issue.record("l1 was answered at once"); return }
        guard case .now(let l2) = next else { Issue.record("l2 was not answered from the outcome cache"); return }
        try #require(l2.header).once?.markSent()
        let lateVerdict = try await lateFuture.get()
        #expect(lateVerdict.header != nil && lateVerdict.reason.hasPrefix("spf=softfail"), "\(lateVerdict)")
        let again = try await evaluate("l2", "two@local.example", on: third)
        #expect(again.header == nil && again.reason.contains("header_already_added"), "the connection keeps l2: \(again)")
        #expect(cached("l1") != nil, "the late message is kept for the cache")
    }

    /// A HELO name over 255 octets made a sender's whole result permerror (accepted), so a
    /// client could forge any sender by saying such a HELO; with a warm cache the same
    /// request got the fail. The sender is judged on its own record, both times.
    @Test func anOverlongHeloDoesNotExcuseAForgedSender() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        let check = try makeCheck(checkSettings(dns))
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        let helo = (1...5).map { _ in String(repeating: "h", count: 60) }.joined(separator: ".")
        let cold = try await decide(engine, request(sender: "a@pass.example", client: "203.0.113.5", helo: helo, instance: "o1"))
        #expect(cold.reason.hasPrefix("spf=fail") && cold.action.isRefusal, "\(cold.reason)")
        let warm = try await decide(engine, request(sender: "b@pass.example", client: "203.0.113.5", helo: helo, instance: "o2"))
        #expect(warm.reason.hasPrefix("spf=fail") && warm.action.isRefusal, "\(warm.reason)")
    }

    @Test func heloCheckRefusesFirst() async throws {
        let dns = try await LoopbackDNSServer.start(zone: spfZone)
        defer { dns.stop() }
        var s = checkSettings(dns)
        s.heloCheck = true
        let check = try makeCheck(s)
        defer { check.verifier.shutdown() }
        let engine = PolicyEngine(stages: [.rcpt: [check]])
        let d = try await decide(engine, request(sender: "a@soft.example", helo: "mail.helo.example", instance: "h1"))
        #expect(d.reason == "spf=fail identity=helo" && d.action.keyword == "550")
        let bounce = try await decide(engine, request(sender: "", helo: "mail.helo.example", instance: "h2"))
        #expect(bounce.reason.hasPrefix("spf=fail identity=helo"))
    }

    @Test func configurationSection() throws {
        SPFSettings.register()
        let text = """
        [policy]
        rcpt = ["spf"]
        [spf]
        resolvers = ["127.0.0.1:5353", "[::1]:53"]
        dns_timeout = "1s"
        evaluation_deadline = "4s"
        workers = 2
        worker_user = "daemon"
        dns_cache_bytes = 1048576
        helo_check = true
        header = "authentication-results"
        authserv_id = "mx.example.org"
        receiver = "mx.example.org"
        trusted_networks = ["10.0.0.0/8"]
        strict_domains = ["Bank.example."]
        [spf.actions]
        permerror = "550 5.7.24 SPF permerror: {domain}"
        """
        let config = try Configuration.parse(text, file: "test.toml")
        let s = SPFSettings.from(config)
        #expect(s.verifier.resolvers == [DNSResolverAddress(host: "127.0.0.1", port: 5353), DNSResolverAddress(host: "::1", port: 53)])
        #expect(s.verifier.dnsTimeout == .seconds(1) && s.verifier.evaluationDeadline == .seconds(4) && s.verifier.workers == 2)
        #expect(s.verifier.workerUser == "daemon" && s.verifier.dnsCache.bytes == 1 << 20)
        #expect(s.heloCheck && s.header == .authenticationResults && s.authservID == "mx.example.org")
        #expect(s.strictDomains == ["bank.example"])
        #expect(s.trustedNetworks.contains("10.1.2.3") && !s.trustedNetworks.contains("127.0.0.1"))
        #expect(s.actions[.permerror] == .reply(code: 550, enhanced: "5.7.24", text: "SPF permerror: {domain}"))
        #expect(s.actions[.fail] == SPFSettings.defaultActions[.fail])
        // The example configuration's [spf] section is valid and shows the defaults.
        let example = LoopbackDNSServer.packageRoot.appendingPathComponent("examples/backstop.toml").path
        let exampleSettings = SPFSettings.from(try Configuration.load(path: example))
        #expect(exampleSettings.actions == SPFSettings.defaultActions)
        #expect(exampleSettings.verifier == SPFSettings().verifier)
        for bad in ["header = \"x-spf\"", "resolvers = [\"dns.example\"]", "workerz = 3", "isolation = \"thread\"",
                    "worker_user = \"root\"", "worker_user = \"\"", "worker_user = \"backstop-no-such-user\"", "worker_user = \"-x\"", "worker_user = \"a\\u0001b\"",
                    "worker_user = \"\(String(repeating: "u", count: 33))\""] {
            #expect(throws: ConfigError.self, "\(bad)") { try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\n\(bad)\n", file: "bad.toml") }
        }
    }

    /// Settings under which a message can arrive without its header are warned about, with
    /// their line: an action that cannot share an answer with the header, and SPF at
    /// END-OF-MESSAGE, where Postfix ignores PREPEND.
    @Test func settingsThatLoseTheHeaderAreWarnedAbout() throws {
        SPFSettings.register()
        let config = try Configuration.parse("""
            [policy]
            end_of_message = ["spf"]
            [spf]
            [spf.actions]
            softfail = "WARN SPF softfail"
            neutral = "PREPEND X-SPF: neutral"
            pass = "OK"
            fail = "550 5.7.23 SPF fail"
            none = "DEFER_IF_REJECT 4.7.1 no SPF"
            """, file: "w.toml")
        let warnings = config.warnings.map(\.description)
        #expect(warnings == [
            "w.toml:7: spf.actions.pass: \"OK\" cannot carry the Received-SPF header too (Postfix takes one action per answer): a message whose recipients all get it arrives without the header; DUNNO accepts with the header",
            "w.toml:5: spf.actions.softfail: \"WARN SPF softfail\" cannot carry the Received-SPF header too (Postfix takes one action per answer): a message whose recipients all get it arrives without the header; DUNNO accepts with the header",
            "w.toml:6: spf.actions.neutral: \"PREPEND X-SPF: neutral\" and the Received-SPF header cannot go in one answer: a message's first answer carries the header and drops this line, later ones carry this line",
            "w.toml:9: spf.actions.none: \"DEFER_IF_REJECT 4.7.1 no SPF\" cannot carry the Received-SPF header too (Postfix takes one action per answer), and lets the mail through when nothing later rejects it: a message whose recipients all get it arrives without the header",
            "w.toml:3: spf.header: policy.end_of_message lists spf, and no other stage does: Postfix ignores PREPEND there (access(5)), so no message gets the Received-SPF header; list spf in policy.rcpt",
        ], "\(warnings)")
        // Listed at RCPT too, the header goes there; HOLD in test mode is logged and the
        // header answered; without a header nothing is lost; the defaults lose nothing.
        #expect(try Configuration.parse("[policy]\nrcpt = [\"spf\"]\nend_of_message = [\"spf\"]\n[spf]\n", file: "r.toml").warnings.isEmpty)
        #expect(try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\ntest_mode = true\n[spf.actions]\nfail = \"HOLD\"\n", file: "t.toml").warnings.isEmpty)
        #expect(try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\n[spf.actions]\nfail = \"HOLD\"\n", file: "h.toml").warnings.count == 1)
        #expect(try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\nheader = \"none\"\n[spf.actions]\npass = \"OK\"\n", file: "n.toml").warnings.isEmpty)
        #expect(try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\n", file: "d.toml").warnings.isEmpty)
    }

    /// A rate-limit rule answering PREPEND where spf adds its header competes with it for
    /// the one action of an answer: check-config says which of the two loses, by check order.
    @Test func aRateLimitPrependBesideTheHeaderIsWarnedAbout() throws {
        SPFSettings.register()
        func warnings(_ rcpt: String, action: String = "PREPEND X-Rate: over", header: String = "received-spf") throws -> [String] {
            try Configuration.parse("""
                [policy]
                rcpt = [\(rcpt)]
                [spf]
                header = "\(header)"
                [ratelimit]
                [[ratelimit.rule]]
                name = "per_sender"
                key = "sender"
                count = "recipient"
                limit = "50/1h"
                action = "\(action)"
                """, file: "p.toml").warnings.map(\.description)
        }
        #expect(try warnings("\"ratelimit\", \"spf\"") == [
            "p.toml:4: spf.header: rate-limit rule \"per_sender\" answers \"PREPEND X-Rate: over\" at rcpt, where spf adds the Received-SPF header, and one answer carries one of them: ratelimit is listed first, so the rule's line takes the message's first answer and the header waits for the next recipient's: a message with one recipient arrives without it",
        ])
        #expect(try warnings("\"spf\", \"ratelimit\"").first?.contains("spf is listed first, so the message's first answer carries the header and drops the rule's line") == true)
        #expect(try warnings("\"spf\", \"ratelimit\"", action: "DEFER 4.7.1 slow down").isEmpty)
        #expect(try warnings("\"spf\", \"ratelimit\"", header: "none").isEmpty)
        let endOfMessage = try Configuration.parse("""
            [policy]
            rcpt = ["spf"]
            end_of_message = ["spf", "ratelimit"]
            [spf]
            [ratelimit]
            [[ratelimit.rule]]
            name = "per_sender"
            key = "sender"
            count = "message"
            protocol_state = "END-OF-MESSAGE"
            limit = "50/1h"
            action = "PREPEND X-Rate: over"
            """, file: "e.toml").warnings.map(\.description)
        #expect(endOfMessage.filter { $0.contains("rate-limit rule") }.isEmpty, "no header at END-OF-MESSAGE: \(endOfMessage)")
        let spfElsewhere = try warnings("\"ratelimit\"")
        #expect(spfElsewhere.filter { $0.contains("rate-limit rule") }.isEmpty, "spf not at rcpt: \(spfElsewhere)")
    }

    /// An evaluation_deadline that is not well inside policy.deadline is lowered: that is a
    /// configuration warning, which check-config prints (it only went to the server's log,
    /// and check-config, which logs nothing, said OK).
    @Test func anEvaluationDeadlineOutsideThePolicyDeadlineIsWarnedAbout() throws {
        SPFSettings.register()
        let config = try Configuration.parse("[policy]\nrcpt = [\"spf\"]\ndeadline = \"1s\"\n[spf]\nevaluation_deadline = \"2s\"\n", file: "e.toml")
        #expect(config.warnings.map(\.description) == [
            "e.toml:5: spf.evaluation_deadline: 2s is not well inside policy.deadline (1s): 800ms is used, so that a slow evaluation gets the temperror action rather than the engine's fallback",
        ], "\(config.warnings)")
        let settings = try #require(config.checks["spf"] as? SPFSettings)
        let check = try #require(try settings.makeCheck(CheckBuildContext(logger: testLogger, deadline: .seconds(1))) as? SPFCheck)
        defer { check.stop() }
        #expect(check.settings.verifier.evaluationDeadline == .milliseconds(800))
        #expect(try Configuration.parse("[policy]\nrcpt = [\"spf\"]\n[spf]\nevaluation_deadline = \"4s\"\n", file: "d.toml").warnings.isEmpty)
    }
}
