// The one log line written per decision, in key=value form, with every value that came
// from the client escaped, naming what every check that ran said. Built only when the log
// level and log.decisions keep it.

import BackstopCore
import Logging
import NIOCore

enum DecisionLog {
    static func line(_ request: PolicyRequest, _ decision: Decision, elapsedNanos: Int64) -> String {
        var line = "decision"
        func add(_ key: String, _ value: String) {
            line += " " + key + "=" + LogEscaping.field(value)
        }
        add("queue_id", request.queueID)
        add("instance", request.instance)
        add("client_address", request.clientAddress)
        add("sender", request.sender)
        add("recipient", request.recipient)
        add("helo_name", request.heloName)
        add("sasl_username", request.saslUsername)
        add("protocol_state", request[.protocolState])
        add("check", decision.check ?? "-")
        // The text as sent: a refusal's is cut for the reply Postfix makes of it.
        add("action", ResponseEncoder.actionText(decision.action, for: request))
        add("reason", decision.reason)
        for entry in decision.trail.entries { add(entry.check, entry.outcome) }
        if decision.trail.count > CheckTrail.capacity { line += " more_checks=\(decision.trail.count - CheckTrail.capacity)" }
        if let would = decision.wouldHave { add("test_mode_would", ResponseEncoder.actionText(would)) }
        if decision.deadlineExpired { line += " deadline_expired=yes" }
        line += " elapsed_us=\(elapsedNanos / 1000)"
        return line
    }
}
