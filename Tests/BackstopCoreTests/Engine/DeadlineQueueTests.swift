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
        // Everything is queued in one turn of the loop, so a test task that the busy test
        // pool resumes late changes nothing about what fires when.
        let due = try await loop.submit { () -> [String: NIODeadline] in
            let start = NIODeadline.now()
            let due = ["a": start + .milliseconds(60), "b": start + .milliseconds(120), "c": start + .milliseconds(180),
                       "d": start + .milliseconds(30)]
            _ = queue.watch(due["a"]!, expire: note("a"))
            let answeredB = queue.watch(due["b"]!, expire: note("b"))
            _ = queue.watch(due["c"]!, expire: note("c"))
            // Out of order: earlier than everything queued (a reload shortened the deadline).
            _ = queue.watch(due["d"]!, expire: note("d"))
            #expect(answeredB.answer(), "answered before its deadline")
            #expect(!answeredB.answer(), "only once")
            return due
        }.get()
        for _ in 0..<200 where fired.withLockedValue({ $0.count }) < 3 { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: .milliseconds(200))  // room for a wrong fourth
        let got = fired.withLockedValue { $0 }
        #expect(got.map(\.0) == ["d", "a", "c"], "\(got.map(\.0))")
        for (name, at) in got { #expect(at >= due[name]!, "\(name) fired \(due[name]! - at) early") }
        let left = try await loop.submit { queue.count }.get()
        #expect(left == 0)
        try await group.shutdownGracefully()
    }

    @Test func aDeadlineWatchedFromAnotherThreadFiresOnce() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let queue = DeadlineQueue(eventLoop: group.next())
        let fired = NIOLockedValueBox(0)
        _ = queue.watch(.now() + .milliseconds(20)) { fired.withLockedValue { $0 += 1 } }
        for _ in 0..<200 where fired.withLockedValue({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: .milliseconds(100))
        #expect(fired.withLockedValue { $0 } == 1)
        let left = try await group.next().submit { queue.count }.get()
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
        // Until the deadline has answered (20 ms, or later on a busy machine), then the entry.
        for _ in 0..<500 where expired.withLockedValue({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(20)) }
        let late = try await loop.submit { entry.answer() }.get()
        #expect(!late, "the deadline answered first")
        #expect(expired.withLockedValue { $0 } == 1)
        try await group.shutdownGracefully()
    }
}
