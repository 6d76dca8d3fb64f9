// DetachedThread: the closure runs on a thread of its own, and a thread that cannot be
// created is an error (Foundation's Thread gave none, and its caller waited forever).

import NIOConcurrencyHelpers
import Testing
@testable import BackstopCore

#if canImport(Glibc)
import Glibc
#endif

@Suite struct DetachedThreadTests {
    @Test func theClosureRunsOnAnotherThread() throws {
        let ran = ConditionLock(value: 0)
        let caller = pthread_self()
        let other = NIOLockedValueBox(false)
        try DetachedThread.start {
            other.withLockedValue { $0 = pthread_equal(pthread_self(), caller) == 0 }
            ran.lock()
            ran.unlock(withValue: 1)
        }
        #expect(ran.lock(whenValue: 1, timeoutSeconds: 10))
        ran.unlock()
        #expect(other.withLockedValue { $0 })
    }

    /// A stack no address space holds (2^62 octets) makes pthread_create fail: an error,
    /// and the closure never runs.
    @Test func aThreadThatCannotBeCreatedIsAnError() {
        let ran = NIOLockedValueBox(false)
        #expect(throws: SystemCallError.self) {
            try DetachedThread.start(stackBytes: 1 << 62) { ran.withLockedValue { $0 = true } }
        }
        #expect(!ran.withLockedValue { $0 })
    }
}
