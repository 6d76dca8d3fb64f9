// `backstop ratelimit status|list|reset`: asks a running server (through its metrics
// listener, for clients in metrics.allow) about its rate-limit keys: one key's state, the
// busiest keys of a rule, or forgetting a key's state. It decides nothing itself.

import ArgumentParser
import BackstopCore
import BackstopServer
import Foundation

struct RateLimitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ratelimit", abstract: "Inspect and reset rate limits on a running server.",
        discussion: """
        The server is reached through its [metrics] listen address (read from --config, or given with
        --metrics). A key is the rule's key value, e.g. a client address or the network the log shows
        (198.51.100.0/24); for a combined key give the values in the rule's order joined by '+'
        (a '+' inside a value is written \\+ when two parts of the rule may hold one).
        """,
        subcommands: [Status.self, List.self, Reset.self])

    /// Where the server is: --metrics, else [metrics] listen of --config.
    struct Server: ParsableArguments {
        @Option(name: .shortAndLong, help: "Configuration of the running server.") var config = Configuration.defaultPath
        @Option(help: "The server's metrics address host:port (instead of reading --config).") var metrics: String?

        /// Sends one request and prints the answer; exit 1 when the server refuses it, 3 when
        /// it cannot be asked.
        func ask(_ method: String, _ path: String, _ parameters: [(String, String)]) throws {
            var address = metrics
            if address == nil {
                let loaded: Configuration
                do { loaded = try Configuration.load(path: config) } catch {
                    for issue in error.issues { printError(issue.description) }
                    throw ExitStatus.cannotAsk.code
                }
                address = loaded.metrics.listen
            }
            guard let address, case .tcp(let host, let port) = ListenerSettings.parseEndpoint(address) else {
                printError("the server has no [metrics] listen address: set one (e.g. \"127.0.0.1:9233\") to query it, or pass --metrics")
                throw ExitStatus.cannotAsk.code
            }
            let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
            let query = parameters.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.1)" }.joined(separator: "&")
            let response: String
            do {
                let client = try PolicyClient(endpoint: .tcp(host: host, port: port))
                // The header a reset needs (MetricsEndpoint.commandHeader); sent on every question.
                try client.send(Array("\(method) \(path)?\(query) HTTP/1.0\r\nHost: \(host)\r\n\(MetricsEndpoint.commandHeader): 1\r\nContent-Length: 0\r\n\r\n".utf8))
                response = try client.readAll()
            } catch {
                printError("cannot ask the server at \(address): \(error)")
                throw ExitStatus.cannotAsk.code
            }
            guard !response.isEmpty else {
                printError("no answer from the server at \(address) (is this host in metrics.allow?)")
                throw ExitStatus.cannotAsk.code
            }
            let parts = response.components(separatedBy: "\r\n\r\n")
            let body = parts.dropFirst().joined(separator: "\r\n\r\n")
            if parts.first?.hasPrefix("HTTP/1.0 200") == true || parts.first?.hasPrefix("HTTP/1.1 200") == true {
                print(body, terminator: "")
            } else {
                printError(body.isEmpty ? response : body)
                throw ExitStatus.refused.code
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a key's state for a rule.")
        @Option(help: "Rule name.") var rule: String
        @Option(help: "Key value, e.g. 192.0.2.7, 192.0.2.0/24 or alice+192.0.2.7.") var key: String
        @OptionGroup var server: Server

        func run() throws { try server.ask("GET", "/ratelimit/status", [("rule", rule), ("key", key)]) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the keys of a rule that used most of their allowance, the least available first.",
            discussion: """
            The PostgreSQL store lists every key that holds state; the memory store knows by name only the
            keys that used more than half their allowance or were refused (up to 65,536).
            """)
        @Option(help: "Rule name.") var rule: String
        @Flag(help: "Only keys over the limit now.") var over = false
        @Option(help: "At most this many keys (1-\(RateLimitCheck.maxListed)).") var limit = 50
        @OptionGroup var server: Server

        func validate() throws {
            guard (1...RateLimitCheck.maxListed).contains(limit) else {
                throw ValidationError("--limit must be 1 to \(RateLimitCheck.maxListed), not \(limit)")
            }
        }

        func run() throws {
            try server.ask("GET", "/ratelimit/list", [("rule", rule), ("limit", String(limit))] + (over ? [("over", "1")] : []))
        }
    }

    struct Reset: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forget a key's state: it has its whole allowance again (logged at notice by the server).")
        @Option(help: "Rule name.") var rule: String
        @Option(help: "Key value, as for status.") var key: String
        @OptionGroup var server: Server

        func run() throws { try server.ask("POST", "/ratelimit/reset", [("rule", rule), ("key", key)]) }
    }
}
