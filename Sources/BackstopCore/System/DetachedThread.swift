// Starts an OS thread that runs one closure and ends, reporting when the thread could not be
// created. Foundation's Thread.detachNewThread ignores a pthread_create failure (no
// thread, no error), which left a caller waiting for the thread's first step forever. For
// threads Backstop owns outside NIO's event loops (the SPF supervisor's waiter, the log
// writer); not a pool and not an executor.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum DetachedThread {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Runs `body` on a new detached thread. `stackBytes`: the thread's stack (0: the
    /// system's default).
    public static func start(stackBytes: Int = 0, _ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        if stackBytes > 0 {
            let code = pthread_attr_setstacksize(&attributes, stackBytes)
            guard code == 0 else { throw SystemCallError(operation: "pthread_attr_setstacksize", errno: code) }
        }
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let code = pthread_create(&thread, &attributes, { context in
            let body = Unmanaged<Body>.fromOpaque(context!).takeRetainedValue()
            body.run()
            return nil
        }, context)
        guard code == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            throw SystemCallError(operation: "pthread_create", errno: code)
        }
    }
}
