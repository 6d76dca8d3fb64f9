// Runs async work from a synchronous command and waits for it on the calling (main)
// thread. The entry point stays synchronous on purpose: Dispatch's async main parks the
// main thread in a state where setuid() no longer reaches it, so after a privilege drop
// that thread would keep root. A main thread blocked on a semaphore is switched too.

import Dispatch

/// Written by the task before it signals, read by the caller after the wait.
final class BlockingResult<T>: @unchecked Sendable {
    var value: Result<T, any Error>?
}

@discardableResult
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let result = BlockingResult<T>()
    Task.detached {
        do { result.value = .success(try await body()) } catch { result.value = .failure(error) }
        done.signal()
    }
    done.wait()
    return try result.value!.get()
}
