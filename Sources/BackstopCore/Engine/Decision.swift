// The engine's final answer for one request, with what the connection needs to write and
// log it. Its fields live behind one reference: a decision moves from the engine's loop
// through its answer to the connection, and as a struct of seven fields each move copied
// and destroyed every field, through Swift's generic value witnesses once it rode in an
// Answer (with DueHeader made one reference too: 26 fewer reference counts and ~200 fewer
// instructions per spf-peers request, for one allocation). It decides nothing itself.

public struct Decision: Sendable {
    private struct Fields: Sendable {
        var action: PolicyAction
        var check: String?
        var reason: String
        var wouldHave: PolicyAction?
        var deadlineExpired: Bool
        var headerOnce: HeaderOnce?
        var trail = CheckTrail()
    }

    /// Copy-on-write, as SPFOutcome's fields are: a setter copies the box first unless this
    /// value is its only holder, so a box two values share is never written (hence
    /// `@unchecked Sendable`). (A generic box shared by both, with read and modify
    /// accessors, cost ~950 instructions more per spf-peers request: not specialised as well.)
    private final class Box: @unchecked Sendable {
        var fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var box: Box

    private mutating func unique() -> Box {
        if !isKnownUniquelyReferenced(&box) { box = Box(box.fields) }
        return box
    }

    public var action: PolicyAction {
        get { box.fields.action }
        set { unique().fields.action = newValue }
    }
    /// The check that decided, or nil when no check had an opinion.
    public var check: String? {
        get { box.fields.check }
        set { unique().fields.check = newValue }
    }
    public var reason: String {
        get { box.fields.reason }
        set { unique().fields.reason = newValue }
    }
    /// When test mode softened a refusal: the answer that would have been sent.
    public var wouldHave: PolicyAction? {
        get { box.fields.wouldHave }
        set { unique().fields.wouldHave = newValue }
    }
    public var deadlineExpired: Bool {
        get { box.fields.deadlineExpired }
        set { unique().fields.deadlineExpired = newValue }
    }
    /// Set when the answer carries a once-per-message header: mark it when written.
    public var headerOnce: HeaderOnce? {
        get { box.fields.headerOnce }
        set { unique().fields.headerOnce = newValue }
    }
    /// What each check that ran said, for the decision line.
    public var trail: CheckTrail {
        get { box.fields.trail }
        set { unique().fields.trail = newValue }
    }

    public init(action: PolicyAction, check: String?, reason: String, wouldHave: PolicyAction? = nil,
                deadlineExpired: Bool = false, headerOnce: HeaderOnce? = nil) {
        box = Box(Fields(action: action, check: check, reason: reason, wouldHave: wouldHave,
                         deadlineExpired: deadlineExpired, headerOnce: headerOnce))
    }
}
