// Every exit status the `backstop` commands use, in one place. The server uses the
// sysexits.h values systemd and supervisors know; the question-answering commands
// (check-config, lookup, spf, query, ratelimit status) use 1-3 as documented in
// docs/operations.md. It does not print anything.

import ArgumentParser

enum ExitStatus: Int32 {
    case success = 0
    /// The answer is no: check-config found problems, lookup found no such recipient, spf
    /// would refuse permanently, ratelimit status was refused by the server.
    case refused = 1
    /// The answer is not final: spf would refuse temporarily, lookup's domain is not ours,
    /// query got no answer.
    case temporary = 2
    /// The command could not ask: its configuration is unreadable or names no server.
    case cannotAsk = 3
    /// EX_OSERR: a listener could not be bound, a Unix socket is in use by another server, the
    /// SPF supervisor could not be started, or it ended while the server ran.
    case osError = 71
    /// EX_NOPERM: privileges could not be dropped, or an SPF worker could not switch user.
    case noPermission = 77
    /// EX_CONFIG: the configuration or a table it names is invalid at start-up.
    case config = 78

    var code: ExitCode { ExitCode(rawValue) }
}
