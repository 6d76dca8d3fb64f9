// What a check keeps about the message a Postfix connection is on. Postfix's smtpd sends
// every request of one message (its `instance`) over the one policy connection it holds, one
// after another, so the state of the current message lives with the connection: reading and
// replacing it takes no lock, no shared dictionary and no memory another message touched
// minutes ago. It is not a cache: it holds one message, and what a check needs to survive a
// reconnection in the middle of a message it hands elsewhere when the connection ends.

import NIOCore

/// One check's state for the message a connection is on.
public protocol ConnectionMemo: AnyObject, Sendable {
    /// The connection ended while this was its message: keep what a later connection of
    /// the same message may need (Postfix reconnects after smtpd_policy_service_max_idle,
    /// _max_ttl or _request_limit, or an error, even in the middle of a message).
    func connectionEnded()
}

/// The per-message state of one connection; made by the connection, handed to the checks in
/// their CheckContext.
///
/// @unchecked Sendable: touched only on the connection's event loop (checks read and write
/// `memo` while they decide or when their future completes there; the connection calls
/// `ended()` from channelInactive). For the same reason Swift's run-time exclusivity check
/// is off for its two fields: no access to them can overlap another (nothing here calls
/// out while one is in progress: `ended()` reads `memo` and clears it before calling
/// the memo's `connectionEnded`), and the check cost two pairs of run-time calls per
/// request. The fields are reached through accessors compiled here: a module that used
/// the stored properties directly would check each access itself.
public final class ConnectionMessage: @unchecked Sendable {
    @exclusivity(unchecked) private var slot: (any ConnectionMemo)?
    @exclusivity(unchecked) private var hasEnded = false

    /// The one check that keeps state here, spf, keeps it in this slot.
    public var memo: (any ConnectionMemo)? {
        get { slot }
        set { slot = newValue }
    }
    /// Set when the connection has ended: a check whose answer came after it keeps its state
    /// elsewhere (`memo` is no longer handed on).
    public var isEnded: Bool { hasEnded }

    public init() {}

    /// The connection is closed: its message's state goes where its check keeps it.
    public func ended() {
        hasEnded = true
        let memo = slot
        slot = nil
        memo?.connectionEnded()
    }
}
