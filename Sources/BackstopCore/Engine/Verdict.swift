// What a check says about one request: an action plus the reason it is logged with, and a
// header the message is due whatever the action (Received-SPF). DUNNO means "no opinion";
// the engine then asks the next check. A header is counted as added only when an answer
// that carries it is written (HeaderOnce), never when a check merely produced it.

import Synchronization

public struct Verdict: Sendable, Equatable {
    public var action: PolicyAction
    /// Short, machine-greppable reason for the log (e.g. "unknown_recipient", "spf=fail").
    public var reason: String
    /// A header for the message: added when no check refuses the request, and also when a
    /// refusal is only logged because of test mode.
    public var header: DueHeader?

    public init(_ action: PolicyAction, reason: String, header: DueHeader? = nil) {
        self.action = action
        self.reason = reason
        self.header = header
    }

    public static func noOpinion(_ reason: String = "") -> Verdict { Verdict(.dunno, reason: reason) }

    public var isNoOpinion: Bool { action.isNoOpinion }
}

/// A header line (without "PREPEND ") due on a message. One reference: it rides in a
/// verdict, and a verdict that holds it inline is too large for Swift to copy and destroy
/// without its generic value witnesses (once per check per request).
public final class DueHeader: Sendable, Equatable {
    public let line: String
    /// When the header is added once per message: marked when an answer carrying it is written.
    public let once: HeaderOnce?

    public init(line: String, once: HeaderOnce? = nil) {
        self.line = line
        self.once = once
    }

    public static func == (a: DueHeader, b: DueHeader) -> Bool { a.line == b.line && a.once == b.once }
}

/// "This message has its header": set by the connection that writes the answer carrying it.
/// Open so that a check's per-message state can be its own flag (one object per message
/// instead of two); @unchecked Sendable only because a class that may be subclassed cannot
/// be checked: its one field is an atomic.
open class HeaderOnce: @unchecked Sendable, Equatable {
    private let sent = Atomic<Bool>(false)

    public init() {}

    public var isSent: Bool { sent.load(ordering: .acquiring) }
    public func markSent() { sent.store(true, ordering: .releasing) }

    public static func == (a: HeaderOnce, b: HeaderOnce) -> Bool { a === b }
}
