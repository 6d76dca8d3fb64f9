// The deadlines of the requests on one event loop that wait for a check answering later
// (an SPF evaluation, the PostgreSQL store), watched by one timer armed for the earliest,
// instead of a timer scheduled and cancelled for every waiting request. Deadlines arrive
// in order (each is "now + policy.deadline", and a request that waits on a second check
// keeps its entry); one that does not (after a reload shortened policy.deadline) is put in
// its place. An answered request's entry is only marked and leaves the queue when it
// reaches the front, so the queue holds at most the requests that began waiting within
// one policy.deadline. It neither decides nor answers: the `expire` closure given with
// each deadline does. Only its event loop touches its state.

import NIOCore

public final class DeadlineQueue: @unchecked Sendable {
    public let eventLoop: any EventLoop

    /// One waiting request. Created on any thread; its state is touched on the loop only.
    final class Entry: @unchecked Sendable {
        let deadline: NIODeadline
        /// Nil once the request was answered or expired. The engine replaces it when the
        /// request goes on to wait for a later check.
        var expire: (() -> Void)?

        init(deadline: NIODeadline, expire: @escaping () -> Void) {
            self.deadline = deadline
            self.expire = expire
        }

        /// On the loop: neither answered nor expired yet.
        var isWaiting: Bool { expire != nil }

        /// On the loop: the request was answered; its deadline no longer matters. True the
        /// first time, false after the deadline or an earlier answer.
        @discardableResult
        func answer() -> Bool {
            guard expire != nil else { return false }
            expire = nil
            return true
        }
    }

    private var entries = CircularBuffer<Entry>()
    /// When the one timer fires, if it is armed.
    private var armed: NIODeadline?

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Calls `expire` on the loop at `deadline` unless the entry is answered first.
    func watch(_ deadline: NIODeadline, expire: @escaping () -> Void) -> Entry {
        let entry = Entry(deadline: deadline, expire: expire)
        if eventLoop.inEventLoop {
            add(entry)
        } else {
            eventLoop.execute { self.add(entry) }
        }
        return entry
    }

    private func add(_ entry: Entry) {
        guard entry.expire != nil else { return }  // answered before it was queued
        if let last = entries.last, last.deadline > entry.deadline {
            var index = entries.endIndex
            while index > entries.startIndex, entries[entries.index(before: index)].deadline > entry.deadline {
                index = entries.index(before: index)
            }
            entries.insert(entry, at: index)
        } else {
            entries.append(entry)
        }
        arm()
    }

    /// Drops answered entries from the front and makes sure the timer fires no later than
    /// the first deadline left. A timer armed for an earlier moment is left to fire.
    private func arm() {
        while let first = entries.first, first.expire == nil { entries.removeFirst() }
        guard let first = entries.first else { return }
        if let armed, armed <= first.deadline { return }
        let deadline = first.deadline
        armed = deadline
        eventLoop.scheduleTask(deadline: deadline) { self.fired(armedFor: deadline) }
    }

    private func fired(armedFor deadline: NIODeadline) {
        // A timer armed later for an earlier deadline took over from this one.
        guard armed == deadline else { return }
        armed = nil
        let now = NIODeadline.now()
        while let first = entries.first, first.expire == nil || first.deadline <= now {
            entries.removeFirst()
            if let expire = first.expire {
                first.expire = nil
                expire()
            }
        }
        arm()
    }

    /// Requests waiting or answered but not yet dropped (tests).
    var count: Int { entries.count }
}
