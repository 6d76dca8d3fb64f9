// `backstop ratelimit status`: asks a running server (through its metrics listener) what
// state a rate-limit key is in, for the admin asking "why is this client deferred?".

import ArgumentParser
import BackstopCore
import BackstopServer
import Foundation

struct RateLimitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ratelimit", abstract: "Inspect rate limits on a running server.",
        subcommands: [Status.self])

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a key's state for a rule on a running server.",
            discussion: """
            The server is reached through its [metrics] listen address (read from --config, or given
            with --metrics). The key is the rule's key value, e.g. a client address; for a combined key
            give the values in the rule's order joined by '+'.
            """)

        @Option(help: "Rule name.") var rule: String
        @Option(help: "Key value, e.g. 192.0.2.7 or alice+192.0.2.7.") var key: String
        @Option(name: .shortAndLong, help: "Configuration of the running server.") var config = Configuration.defaultPath
        @Option(help: "The server's metrics address host:port (instead of reading --config).") var metrics: String?

        func run() throws {
            var address = metrics
            if address == nil {
                let loaded: Configuration
                do { loaded = try Configuration.load(path: config) } catch {
                    let issues = error.issues
                    for issue in issues { printError(issue.description) }
                    throw ExitStatus.cannotAsk.code
                }
                address = loaded.metrics.listen
            }
            guard let address, case .tcp(let host, let port) = ListenerSettings.parseEndpoint(address) else {
                printError("the server has no [metrics] listen address: set one (e.g. \"127.0.0.1:9233\") to query it, or pass --metrics")
                throw ExitStatus.cannotAsk.code
            }
            let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
            func encode(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s }
            let client = try PolicyClient(endpoint: .tcp(host: host, port: port))
            try client.send(Array("GET /ratelimit/status?rule=\(encode(rule))&key=\(encode(key)) HTTP/1.0\r\nHost: \(host)\r\n\r\n".utf8))
            let response = try client.readAll()
            guard !response.isEmpty else {
                printError("no answer from the server at \(address) (is it running, and is this host in metrics.allow?)")
                throw ExitStatus.refused.code
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
}
