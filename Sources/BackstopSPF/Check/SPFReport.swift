// What `backstop spf` prints: the result word alone on the first line (for scripts), then
// the mechanism that matched, the header it would add, the time taken, the identity, the
// explanation or problem, and the answer the server would give, test mode included. Uses
// the same settings, verifier and rules as the server; it does not evaluate on its own.

import BackstopCore
import Foundation
import Logging
import NIOCore
import NIOPosix

public enum SPFReport {
    /// Evaluates as the server would for a client `ip`, MAIL FROM `sender` ("" for a
    /// bounce) and HELO `helo`, and returns the text to print with the answer's action.
    public static func run(settings: SPFSettings, ip: String, sender: String, helo: String,
                           testMode: Bool = false) async -> (text: String, answer: PolicyAction) {
        let verifier = SPFVerifier(settings: settings.verifier, logger: Logger(label: "backstop.spf"))
        defer { verifier.shutdown() }
        let check = SPFCheck(settings: settings, verifier: verifier)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let queries = check.queries(client: ip, sender: sender, helo: helo)
        let deadline = NIODeadline.now() + settings.verifier.evaluationDeadline
        // A request the server skips (trusted_networks, trusted_helo_names,
        // skip_sender_domains) gets no opinion from SPF, whatever the result.
        let skip = IPAddress(ip).flatMap { check.clientSkip($0, clientName: "", helo: helo) }
            ?? check.senderSkip(client: ip, sender: sender, helo: helo)
        let skipped = skip.map { "answer: DUNNO\nnote: the server skips SPF for this request (spf=skipped(\($0))): the result above is not used\n" }
        let evaluated = (try? await check.evaluations(queries, deadline: deadline, on: loop) { $0 }.get()) ?? SPFEvaluated()
        guard let deciding = evaluated.heloResult == .fail ? evaluated.helo : (evaluated.mailfrom ?? evaluated.helo) else {
            // No outcome at all (the verifier failed): the server answers its temperror action.
            if let skipped { return ("temperror\n" + skipped, .dunno) }
            let action = check.failVerdict.action
            return ("temperror\nanswer: \(ResponseEncoder.actionText(action))\n", action)
        }
        var verdict = check.verdict(for: evaluated, header: nil)
        var text = ""
        if verdict.action.withholdsMail && (testMode || settings.testMode) {
            text += "note: test mode: the server would only log \(ResponseEncoder.actionText(verdict.action))\n"
            verdict = Verdict(verdict.header.map { .prepend($0.line) } ?? .dunno, reason: verdict.reason)
        } else if verdict.action.isNoOpinion, let due = verdict.header {
            verdict = Verdict(.prepend(due.line), reason: verdict.reason)
        }
        // The header only when the answer adds it (a refusal adds none).
        var header: String?
        if case .prepend(let line) = verdict.action { header = line }
        text = describe(deciding, header: header) + text
        if let skipped { return (text + skipped, .dunno) }
        text += "answer: \(ResponseEncoder.actionText(verdict.action))\n"
        return (text, verdict.action)
    }

    /// The outcome as lines of text: the result word alone on the first, then the mechanism,
    /// the header, the time taken, and the details.
    public static func describe(_ outcome: SPFOutcome, header: String?) -> String {
        var lines = [outcome.result.rawValue]
        // The mechanism comes from a worker, which parsed a domain owner's text.
        lines.append("mechanism: \(outcome.mechanism.map { ResponseEncoder.sanitise($0, limit: 400) } ?? "-")")
        lines.append("header: \(header.map { ResponseEncoder.sanitise($0, limit: ResponseEncoder.maxHeaderLine) } ?? "-")")
        let ms = Double(outcome.elapsed.nanoseconds) / 1e6
        lines.append(String(format: "time: %.1f ms (%d DNS-mechanism lookups, %d void, %d queries)",
                            ms, outcome.lookups, outcome.voidLookups, outcome.queries))
        lines.append("identity: \(outcome.query.identity.rawValue) \(outcome.query.checkedMailbox)")
        if let explanation = outcome.explanation {
            lines.append("explanation: \(ResponseEncoder.sanitise(explanation, limit: 400))")
        }
        if let problem = outcome.problem { lines.append("problem: \(ResponseEncoder.sanitise(problem, limit: 400))") }
        return lines.joined(separator: "\n") + "\n"
    }
}
