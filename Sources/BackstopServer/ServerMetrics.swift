// Counters and gauges the server itself keeps (requests by stage and answer, latency,
// protocol errors, timeouts, connections). Checks report their own decisions. Handles are
// created once, so recording a request costs no lookup.

import BackstopCore
import Metrics

public final class ServerMetrics: Sendable {
    /// Answer classes used as the `action` dimension.
    static let actionClasses = ["dunno", "ok", "reject", "defer", "prepend", "warn", "info", "hold", "discard"]

    let requests: [[Counter]]
    let latency: Metrics.Timer
    let protocolErrors = Counter(label: "backstop_protocol_errors_total")
    let readTimeouts = Counter(label: "backstop_read_timeouts_total")
    let deadlineExpiries = Counter(label: "backstop_deadline_expiries_total")
    let connectionsRefused: Counter
    let connectionsLimited: Counter
    let connectionsOpen = Gauge(label: "backstop_connections_open")
    let connectionsAccepted = Counter(label: "backstop_connections_accepted_total")
    let configGeneration = Gauge(label: "backstop_config_generation")
    let configReloads: Counter
    let configReloadFailures: Counter
    /// Refusals test mode turned into a log line (and a header or WARN), by check.
    let testModeRefusals: [String: Counter]

    public init() {
        requests = ProtocolState.allCases.map { state in
            Self.actionClasses.map { action in
                Counter(label: "backstop_requests_total",
                        dimensions: [("protocol_state", state.rawValue), ("action", action)])
            }
        }
        latency = Metrics.Timer(label: "backstop_request_duration_seconds", preferredDisplayUnit: .seconds)
        connectionsRefused = Counter(label: "backstop_connections_rejected_total", dimensions: [("reason", "not_allowed")])
        connectionsLimited = Counter(label: "backstop_connections_rejected_total", dimensions: [("reason", "max_connections")])
        configReloads = Counter(label: "backstop_config_reloads_total", dimensions: [("result", "success")])
        configReloadFailures = Counter(label: "backstop_config_reloads_total", dimensions: [("result", "failure")])
        var testMode: [String: Counter] = [:]
        for kind in CheckCatalog.kinds {
            testMode[kind.name] = Counter(label: "backstop_test_mode_refusals_total", dimensions: [("check", kind.name)])
        }
        testModeRefusals = testMode
    }

    static func actionClass(_ action: PolicyAction) -> Int {
        switch action {
        case .dunno: 0
        case .ok: 1
        case .reject: 2
        case .deferTemporarily, .deferIfPermit, .deferIfReject: 3
        case .reply(let code, _, _): code >= 500 ? 2 : 3
        case .prepend: 4
        case .warn: 5
        case .info: 6
        case .hold: 7
        case .discard: 8
        }
    }

    func record(request: PolicyRequest, decision: Decision, elapsedNanos: Int64) {
        let state = request.protocolState.index
        requests[state][Self.actionClass(decision.action)].increment()
        latency.recordNanoseconds(elapsedNanos)
        if decision.deadlineExpired { deadlineExpiries.increment() }
        if decision.wouldHave != nil, let check = decision.check { testModeRefusals[check]?.increment() }
    }
}
