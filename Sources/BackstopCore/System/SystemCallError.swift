// The error of a system call (or of a system-level step such as a privilege switch) that
// failed: what was attempted, and errno when the kernel gave one. Used wherever Backstop
// talks to the OS directly; it does not log or decide what a failure means.

import Foundation

public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    /// "setuid(65534)", "setrlimit(RLIMIT_AS)", "unix:/run/backstop/policy.sock".
    public let operation: String
    /// errno of the failing call, or nil when the step failed for another reason.
    public let errno: Int32?
    /// A reason when there is no errno ("no such user", "root could be regained").
    public let detail: String?

    /// A failure with the current errno.
    public static func lastError(_ operation: String) -> SystemCallError {
        SystemCallError(operation: operation, errno: Glibc.errno, detail: nil)
    }

    public init(operation: String, errno: Int32? = nil, detail: String? = nil) {
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        if let errno { return "\(operation): \(String(cString: strerror(errno)))" }
        return detail.map { "\(operation): \($0)" } ?? operation
    }
}
