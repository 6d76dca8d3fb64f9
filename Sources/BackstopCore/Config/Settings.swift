// The server-wide settings: listeners, connection limits and timeouts, protocol limits,
// logging, the policy stages and metrics. Check sections live with their checks.

import NIOCore

public struct ListenerSettings: Sendable, Equatable {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }
    /// What a listener speaks: Postfix's policy delegation protocol (check_policy_service),
    /// or its socketmap lookup protocol (socketmap: tables, for canonical and recipient maps).
    public enum ServedProtocol: String, Sendable, Equatable { case policy, socketmap }
    public var endpoint: Endpoint
    public var `protocol`: ServedProtocol = .policy
    /// Unix socket permissions, e.g. 0o660.
    public var mode: Int
    public var owner: String?
    public var group: String?
    /// TCP only: clients outside these networks are disconnected before a byte is read.
    public var allow: NetworkList

    public init(endpoint: Endpoint, mode: Int = 0o660, owner: String? = nil, group: String? = nil, allow: NetworkList = NetworkList([])) {
        self.endpoint = endpoint
        self.mode = mode
        self.owner = owner
        self.group = group
        self.allow = allow
    }

    public static let defaultTCP = ListenerSettings(endpoint: .tcp(host: "127.0.0.1", port: 10033), mode: 0o660,
                                                    owner: nil, group: nil, allow: NetworkList([]))

    /// Parses "127.0.0.1:10033", "[::1]:10033", "localhost:10033" or "unix:/path".
    public static func parseEndpoint(_ text: String) -> Endpoint? {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            return path.hasPrefix("/") ? .unix(path: path) : nil
        }
        if text.hasPrefix("/") { return .unix(path: text) }
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { return nil }
            portText = after.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return nil }  // bare IPv6 needs brackets
        }
        guard let port = Int(portText), (0...65535).contains(port), !host.isEmpty else { return nil }
        return .tcp(host: String(host), port: port)
    }
}

public struct ServerSettings: Sendable, Equatable {
    /// Most simultaneous client connections; further ones are closed at once and logged.
    public var maxConnections = 1000
    /// A connection with no request in progress is closed after this long. Longer than
    /// Postfix's smtpd_policy_service_max_idle (300 s), so Postfix closes first.
    public var idleTimeout: TimeAmount = .seconds(330)
    /// A request that was started must be completed within this long.
    public var readTimeout: TimeAmount = .seconds(30)
    /// On SIGTERM, requests in flight get this long to be answered.
    public var shutdownGrace: TimeAmount = .seconds(10)
    /// Event loop threads; 0 means one per two cores, at least one (`eventLoops`).
    public var threads = 0

    /// The event loops a server with `threads` runs on a machine of `cores`. Backstop shares
    /// the machine with Postfix, whose smtpd processes are its clients: on 2 cores, one loop
    /// answered 15–17 % more requests than one per core (spf-peers, checks: two loops went to
    /// sleep and were woken more often), and 15 % fewer when every request needs an SPF
    /// evaluation in a worker (docs/benchmarks.md).
    public static func eventLoops(threads: Int, cores: Int) -> Int {
        threads > 0 ? threads : max(1, cores / 2)
    }
    /// Drop privileges to this user and group after binding (only when started as root).
    public var user: String?
    public var group: String?
}

public struct LogSettings: Sendable, Equatable {
    public enum Destination: String, Sendable, Equatable { case stderr, stdout, syslog }
    /// Which decisions get a log line (at level info).
    public enum Decisions: String, Sendable, Equatable, CaseIterable { case all, refusals, none }
    public var decisions: Decisions = .all
    public var level = "info"
    public var destination: Destination = .stderr
    /// How often a summary line with counts is written; zero turns it off.
    public var summaryInterval: TimeAmount = .minutes(0)
}

public struct PolicySettings: Sendable {
    /// Turns every refusal into WARN (logged, not enforced).
    public var testMode = false
    /// Every request is answered within this long, whatever the checks do.
    public var deadline: TimeAmount = PolicySettings.defaultDeadline
    public static let defaultDeadline: TimeAmount = .seconds(5)
    /// Which checks run, in order, for each protocol_state.
    public var stages: [ProtocolState: [String]] = [:]

    /// A stage where the check named `name` runs, or nil when it runs at none.
    public func stage(listing name: String) -> ProtocolState? {
        stages.first { $0.value.contains(name) }?.key
    }

    /// True when the check named `name` runs at `state`.
    public func runs(_ name: String, at state: ProtocolState) -> Bool { stages[state]?.contains(name) ?? false }
}

public struct MetricsSettings: Sendable, Equatable {
    /// "127.0.0.1:9233" to serve Prometheus metrics over HTTP; nil (the default) for none.
    public var listen: String?
    /// Clients that may connect (both /metrics and /ratelimit/status); others are closed
    /// before a byte is read. Loopback by default; must be given when `listen` is not a
    /// loopback address.
    public var allow = NetworkList(CIDR.loopback)
    /// Most simultaneous HTTP connections; they also count toward server.max_connections.
    public var maxConnections = 16
    /// A request must arrive complete within this long of the connection or the last answer.
    public var readTimeout: TimeAmount = .seconds(10)
    /// A kept-alive connection with no request is closed after this long.
    public var idleTimeout: TimeAmount = .seconds(60)

    public init() {}

    /// True when `listen` names a loopback address ("localhost" counts).
    public static func isLoopback(host: String) -> Bool {
        if host == "localhost" { return true }
        guard let address = IPAddress(host) else { return false }
        return NetworkList(CIDR.loopback).contains(address)
    }
}
