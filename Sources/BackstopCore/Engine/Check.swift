// The contract every check fulfils: turn a request into a verdict, now or later.
// Synchronous checks answer `.now` on the event loop with no allocation beyond the
// verdict; checks that wait (SPF, a remote store) answer `.later` with a future.

import NIOCore
import Logging

/// What every request of one connection shares: its event loop, the server's logger and the
/// connection's message slot. Made once per connection (PolicyResponder), so a request's
/// context takes one reference instead of one per part.
public final class CheckScope: Sendable {
    public let eventLoop: any EventLoop
    public let logger: Logger
    /// The state of the message the connection is on; nil when no connection asks
    /// (`backstop query`, tests).
    public let message: ConnectionMessage?

    public init(eventLoop: any EventLoop, logger: Logger, message: ConnectionMessage? = nil) {
        self.eventLoop = eventLoop
        self.logger = logger
        self.message = message
    }
}

/// Everything a check may need besides the request itself.
public struct CheckContext: Sendable {
    public let scope: CheckScope
    /// After this instant the engine stops waiting and uses the check's fail action.
    public let deadline: NIODeadline
    /// When the request was taken up: a check that needs the time reads it here rather than
    /// asking the clock again (one reading serves the connection, the engine and the checks).
    /// A check that runs after one that answered later sees the same instant, up to
    /// policy.deadline earlier than the clock: good enough for expiries counted in minutes.
    public let now: NIODeadline

    public var eventLoop: any EventLoop { scope.eventLoop }
    public var logger: Logger { scope.logger }
    /// The state of the message the request's connection is on; nil when no connection asks.
    public var message: ConnectionMessage? { scope.message }

    public init(scope: CheckScope, deadline: NIODeadline, now: NIODeadline) {
        self.scope = scope
        self.deadline = deadline
        self.now = now
    }

    public init(eventLoop: any EventLoop, deadline: NIODeadline, logger: Logger, message: ConnectionMessage? = nil,
                now: NIODeadline = .now()) {
        self.init(scope: CheckScope(eventLoop: eventLoop, logger: logger, message: message), deadline: deadline, now: now)
    }
}

/// Class-bound: the engine passes checks around as `any Check`, and a class existential is
/// copied with one retain (an opaque one went through value witnesses, ~2,000
/// instructions per request in spf-warm).
public protocol Check: AnyObject, Sendable {
    /// The check's name as used in the configuration and the logs ("recipients", "spf", …).
    var name: String { get }
    /// When true, refusals from this check are answered as WARN and only logged.
    var testMode: Bool { get }
    /// What to answer when the check cannot decide in time or fails internally.
    var failVerdict: Verdict { get }

    func evaluate(_ request: PolicyRequest, context: CheckContext) -> Answer<Verdict>
}

/// A check that holds resources beyond its own lifetime (worker processes, sockets): the
/// engine that replaces it on reload tells it so, once the new engine is in force.
public protocol RetirableCheck: Check {
    /// `successor` is the check of the same name in the new engine (nil when there is none);
    /// release what it does not take over.
    func retire(replacedBy successor: (any Check)?)
    /// The server stops: release everything now.
    func stop()
    /// After `stop()`, before the event loops end: returns once what `stop()` started is
    /// done (nothing, unless a check says otherwise).
    func stopped() async
}

extension RetirableCheck {
    public func stopped() async {}
}
