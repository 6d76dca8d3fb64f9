// Runs async work from a synchronous command and waits for it on the calling (main)
// thread. The entry point stays synchronous on purpose: Dispatch's async main parks the
// main thread in a state where setuid() no longer reaches it, so after a privilege drop
// that thread would keep root. A main thread blocked on a semaphore is switched too.

import Dispatch

final class BlockingResult: @unchecked Sendable {
    var error: (any Error)?
}

func runBlocking(_ body: @escaping @Sendable () async throws -> Void) throws {
    let done = DispatchSemaphore(value: 0)
    let result = BlockingResult()
    Task.detached {
        do { try await body() } catch { result.error = error }
        done.signal()
    }
    done.wait()
    if let error = result.error { throw error }
}
