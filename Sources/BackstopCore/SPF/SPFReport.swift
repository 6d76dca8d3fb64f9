// What `backstop spf` prints: the result word alone on the first line (for scripts), then
// the mechanism that matched, the header it would add, the time taken, and the identity,
// explanation or problem and the answer Backstop would give. Uses the same settings, verifier and rules as the server.

import Foundation
import Logging
import NIOCore

public enum SPFReport {
    /// Evaluates as the server would for a client `ip`, MAIL FROM `sender` ("" for a
    /// bounce) and HELO `helo`, and returns the text to print.
    public static func run(settings: SPFSettings, ip: String, sender: String, helo: String) async -> String {
        let verifier = SPFVerifier(settings: settings.verifier, logger: Logger(label: "backstop.spf"))
        defer { verifier.shutdown() }
        let check = SPFCheck(settings: settings, verifier: verifier)
        var evaluated = SPFEvaluated()
        if settings.heloCheck, !helo.isEmpty, SPFQuery.domainProblem(helo) == nil {
            evaluated.helo = await verifier.evaluate(ip: ip, sender: "", helo: helo, identity: .helo)
        }
        if evaluated.helo?.result != .fail {
            if sender.isEmpty, var same = evaluated.helo {
                same.query.identity = .mailfrom
                evaluated.mailfrom = same
            } else {
                evaluated.mailfrom = await verifier.evaluate(ip: ip, sender: sender, helo: helo, identity: .mailfrom)
            }
        }
        let deciding = evaluated.helo?.result == .fail ? evaluated.helo! : (evaluated.mailfrom ?? evaluated.helo!)
        let verdict = check.verdict(for: evaluated, header: true)
        // The header only when the answer adds it (a refusal adds none).
        var header: String?
        if case .prepend(let line) = verdict.action { header = line }
        var text = describe(deciding, header: header)
        text += "answer: \(ResponseEncoder.actionText(verdict.action))\n"
        if let address = IPAddress(ip), settings.trustedNetworks.contains(address) {
            text += "note: \(ip) is in trusted_networks: the server would skip SPF for it\n"
        }
        return text
    }

    /// The outcome as lines of text: the result word alone on the first, then the mechanism,
    /// the header, the time taken, and the details.
    public static func describe(_ outcome: SPFOutcome, header: String?) -> String {
        var lines = [outcome.result.rawValue]
        lines.append("mechanism: \(outcome.mechanism ?? "-")")
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
