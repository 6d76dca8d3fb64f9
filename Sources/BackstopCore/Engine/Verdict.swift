// What a check says about one request: an action plus the reason it is logged with.
// DUNNO means "no opinion"; the engine then asks the next check.

public struct Verdict: Sendable, Equatable {
    public var action: PolicyAction
    /// Short, machine-greppable reason for the log (e.g. "unknown_recipient", "spf=fail").
    public var reason: String

    public init(_ action: PolicyAction, reason: String) {
        self.action = action
        self.reason = reason
    }

    public static func noOpinion(_ reason: String = "") -> Verdict { Verdict(.dunno, reason: reason) }

    public var isNoOpinion: Bool { action.isNoOpinion }
}
