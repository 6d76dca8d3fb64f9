// The warnings a client can cause as often as it connects or sends (a refused connection, a
// protocol error, a read timeout, a socketmap TEMP or PERM, a malformed metrics request), written at most once per
// `interval` per kind with how many were left out, so a flood of them cannot flood the log.
// The metrics count every one. Warnings that only the administrator's own actions cause
// are logged as they happen, not here.

import BackstopCore
import Logging
import NIOCore

struct ServerWarnings: Sendable {
    /// One line per kind per second at most.
    static let interval: TimeAmount = .seconds(1)

    enum Kind: Int, CaseIterable {
        case refusedByAllow, refusedAtMaxConnections, metricsRefusedByAllow, metricsRefusedAtMax,
             protocolError, readTimeout, socketmapFailure, metricsBadRequest
    }

    private let throttles = Kind.allCases.map { _ in LogThrottle(interval: ServerWarnings.interval) }

    /// Logs `message` at warning when this kind's line is due, noting how many were not logged.
    func warn(_ kind: Kind, _ logger: Logger, _ message: @autoclosure () -> String) {
        guard let count = throttles[kind.rawValue].note() else { return }
        let left = count > 1 ? " (\(count - 1) more like it since the last such line)" : ""
        logger.warning("\(message())\(left)")
    }
}
