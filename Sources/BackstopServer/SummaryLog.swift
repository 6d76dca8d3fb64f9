// Writes one log line every `log.summary_interval` with the answers given since the last
// one, for sites that read logs rather than metrics. Counts are kept per event loop and
// collected on each loop, so the hot path takes no lock for them.

import BackstopCore
import Logging
import NIOCore

public final class SummaryLog: Sendable {
    let task: RepeatedTask

    public init(server: PolicyServer, interval: TimeAmount) {
        let state = server.state
        let logger = server.logger
        let loops = Array(state.engines.values)
        let anchor = server.group.next()
        task = anchor.scheduleRepeatedAsyncTask(initialDelay: interval, delay: interval) { _ in
            let collected = loops.map { engine in engine.eventLoop.submit { engine.takeCounts() } }
            return EventLoopFuture.whenAllSucceed(collected, on: anchor).map { results in
                var totals = [Int](repeating: 0, count: ServerMetrics.actionClasses.count)
                var expiries = 0
                for (counts, expired) in results {
                    for i in counts.indices { totals[i] += counts[i] }
                    expiries += expired
                }
                var line = "summary interval=\(DurationText.format(interval)) requests=\(totals.reduce(0, +))"
                for (i, name) in ServerMetrics.actionClasses.enumerated() { line += " \(name)=\(totals[i])" }
                line += " deadline_expired=\(expiries) connections_open=\(state.openConnections.value)"
                logger.notice("\(line)")
            }
        }
    }

    public func stop() { task.cancel() }
}
