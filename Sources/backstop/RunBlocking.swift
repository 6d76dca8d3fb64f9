// Runs async work from a synchronous command and waits for it on the calling (main)
// thread. The entry point stays synchronous on purpose: Dispatch's async main parks the
// main thread in a state where setuid() no longer reaches it, so after a privilege drop
// that thread would keep root. A main thread blocked on a lock is switched too.

import NIOConcurrencyHelpers

@discardableResult
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let done = ConditionLock(value: false)
    let result = NIOLockedValueBox<Result<T, any Error>?>(nil)
    Task.detached {
        let outcome: Result<T, any Error>
        do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
        result.withLockedValue { $0 = outcome }
        done.lock()
        done.unlock(withValue: true)
    }
    done.lock(whenValue: true)
    done.unlock()
    return try result.withLockedValue { $0! }.get()
}
