// The one log line written per decision, in key=value form, with every value that came
// from the client escaped. Built only when the log level keeps it.

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
        add("protocol_state", request[.protocolState])
        add("check", decision.check ?? "-")
        add("action", ResponseEncoder.actionText(decision.action))
        add("reason", decision.reason)
        if let would = decision.wouldHave { add("test_mode_would", ResponseEncoder.actionText(would)) }
        if decision.deadlineExpired { line += " deadline_expired=yes" }
        line += " elapsed_us=\(elapsedNanos / 1000)"
        return line
    }
}
