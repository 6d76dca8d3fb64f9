// DeadlineQueue on a real event loop: every deadline fires once, in deadline order, not
// before its time; an answered one never fires; one added out of order (after a reload
// shortened policy.deadline) fires at its own time, not behind the later ones; and the
// queue empties.

import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import BackstopCore

@Suite struct DeadlineQueueTests {
    @Test func deadlinesFireOnceInOrderAndAnsweredOnesNever() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let queue = DeadlineQueue(eventLoop: loop)
        let fired = NIOLockedValueBox<[(String, NIODeadline)]>([])
        let note: @Sendable (String) -> () -> Void = { name in { fired.withLockedValue { $0.append((name, .now())) } } }
        let start = NIODeadline.now()
        let a = start + .milliseconds(60), b = start + .milliseconds(120), c = start + .milliseconds(180)
        let d = start + .milliseconds(30)
        try await loop.submit {
            _ = queue.watch(a, expire: note("a"))
            let answeredB = queue.watch(b, expire: note("b"))
            _ = queue.watch(c, expire: note("c"))
            #expect(answeredB.answer(), "answered before its deadline")
            #expect(!answeredB.answer(), "only once")
        }.get()
        // From another thread, out of order: earlier than everything queued.
        _ = queue.watch(d, expire: note("d"))
        try await Task.sleep(for: .milliseconds(500))
        let got = fired.withLockedValue { $0 }
        #expect(got.map(\.0) == ["d", "a", "c"], "\(got.map(\.0))")
        for (name, at) in got {
            let due = ["a": a, "c": c, "d": d][name]!
            #expect(at >= due, "\(name) fired \(due - at) early")
        }
        let left = try await loop.submit { queue.count }.get()
        #expect(left == 0)
        try await group.shutdownGracefully()
    }

    @Test func anEntryAnsweredAtItsDeadlineIsAnsweredOnce() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let queue = DeadlineQueue(eventLoop: loop)
        let expired = NIOLockedValueBox(0)
        let entry = try await loop.submit {
            queue.watch(.now() + .milliseconds(20)) { expired.withLockedValue { $0 += 1 } }
        }.get()
        try await Task.sleep(for: .milliseconds(200))
        let late = try await loop.submit { entry.answer() }.get()
        #expect(!late, "the deadline answered first")
        #expect(expired.withLockedValue { $0 } == 1)
        try await group.shutdownGracefully()
    }
}
