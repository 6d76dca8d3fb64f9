// Writes finished log lines on a thread of its own, so a reader that stops reading (a
// stalled journald or syslog, a full pipe) never stops an event loop: the loops only queue.
// The queue is bounded (`maxQueuedBytes`); a line that does not fit is dropped and counted,
// and the count is written as a warning once there is room again. Lines are written in the
// order they were queued, many at a time. At exit the queue is written out, for at most
// `exitFlushSeconds`. What a line says and where it goes is LogOutput's.

import BackstopCore
import Foundation
import NIOConcurrencyHelpers

final class LogWriter: @unchecked Sendable {
    /// The most octets of lines waiting to be written: a burst of about 10,000 decision lines.
    static let maxQueuedBytes = 4 << 20
    /// How long the exit waits for a reader that does not read.
    static let exitFlushSeconds = 2

    struct Line {
        /// 1 or 2 for stdout or stderr; -1 for syslog.
        let fd: Int32
        let priority: Int32
        let text: String
    }

    /// 0: nothing queued and the writer idle; 1: lines queued; 2: the writer is writing.
    private let condition = ConditionLock(value: 0)
    // Guarded by `condition`.
    private var queue: [Line] = []
    private var queuedBytes = 0
    private var dropped = 0
    private var started = false
    private let sink: @Sendable ([Line], _ dropped: Int) -> Int

    /// `sink` writes a batch of lines, after reporting `dropped` lines left out before them,
    /// and returns how many of them it could not write (they count as dropped).
    init(sink: @escaping @Sendable ([Line], _ dropped: Int) -> Int) {
        self.sink = sink
    }

    /// Queues a line; never blocks on the reader. False when it was dropped.
    @discardableResult
    func enqueue(_ line: Line) -> Bool {
        condition.lock()
        if !started {
            do throws(SystemCallError) {
                try DetachedThread.start { [self] in run() }
                started = true
            } catch {
                // No writer thread (the system is out of threads or memory): the line is
                // dropped and counted rather than written here, where a stalled reader would
                // stop an event loop; the next line tries again, and the first one written
                // reports the count.
                dropped += 1
                condition.unlock()
                return false
            }
        }
        guard queuedBytes + line.text.utf8.count <= Self.maxQueuedBytes else {
            dropped += 1
            // Wakes the writer even when nothing else is queued, so the count is reported.
            condition.unlock(withValue: 1)
            return false
        }
        queue.append(line)
        queuedBytes += line.text.utf8.count
        condition.unlock(withValue: 1)
        return true
    }

    private func run() {
        while true {
            condition.lock(whenValue: 1)
            let batch = queue, lost = dropped
            queue = []
            queuedBytes = 0
            dropped = 0
            condition.unlock(withValue: 2)
            let unwritten = sink(batch, lost)
            condition.lock()
            dropped += unwritten
            // A count of dropped lines is written at once only while writing works; after a
            // failed write it waits for the next line (no loop against a reader that is gone).
            let more = !queue.isEmpty || (dropped > 0 && unwritten == 0)
            condition.unlock(withValue: more ? 1 : 0)
        }
    }

    /// Waits until every queued line is written, for at most `seconds`; false if it was not.
    @discardableResult
    func flush(seconds: Int) -> Bool {
        guard condition.lock(whenValue: 0, timeoutSeconds: Double(seconds)) else { return false }
        condition.unlock()
        return true
    }

    /// Lines dropped and not yet reported (for tests).
    var droppedNow: Int {
        condition.lock()
        defer { condition.unlock() }
        return dropped
    }
}
