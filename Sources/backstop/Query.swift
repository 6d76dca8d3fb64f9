// `backstop query`: sends one request to a running server and prints its answer, what an
// administrator would otherwise type into nc. Attributes come from flags, or raw
// name=value lines from standard input with --stdin. The server is --server, else the
// first listener of --config; the exit status says what the answer was.

import ArgumentParser
import BackstopCore
import BackstopServer
import Foundation

struct Query: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one policy request to a running server and print the answer.",
        discussion: "Exit status: 0 accepted, 1 refused (5xx, REJECT), 2 deferred (4xx, DEFER), 3 no answer or an error.")

    @Option(help: "Server address: host:port, [ipv6]:port or unix:/path (default: the first listener of --config).")
    var server: String?
    @Option(name: .shortAndLong, help: "Configuration file whose first listener is asked when --server is not given.")
    var config = Configuration.defaultPath
    @Option(help: "protocol_state (RCPT, DATA, END-OF-MESSAGE, …).") var state = "RCPT"
    @Option(help: "Envelope sender (empty for a bounce).") var sender = "sender@example.org"
    @Option(help: "Envelope recipient.") var recipient = "postmaster@example.com"
    @Option(name: .customLong("client-address"), help: "SMTP client IP address (default: this host, which the example treats as trusted).") var clientAddress = "127.0.0.1"
    @Option(name: .customLong("client-name"), help: "SMTP client host name.") var clientName = "localhost"
    @Option(help: "HELO/EHLO name.") var helo = "localhost"
    @Option(help: "Message instance (same for every recipient of one message; default: a new one per call).") var instance: String?
    @Option(name: .customLong("sasl-username"), help: "SASL login name, if authenticated.") var saslUsername = ""
    @Option(name: .customLong("recipient-count"), help: "recipient_count (DATA stage).") var recipientCount = 0
    @Option(help: "Message size in octets.") var size = 0
    @Option(name: .customLong("attribute"), help: "Extra name=value attribute (repeatable).")
    var attributes: [String] = []
    @Flag(help: "Read the request's name=value lines from standard input instead.")
    var stdin = false

    /// --server, else the first policy listener of --config; the default listener when the default
    /// configuration file does not exist.
    func endpoint() throws -> ListenerSettings.Endpoint {
        if let server {
            guard let endpoint = ListenerSettings.parseEndpoint(server) else {
                throw ValidationError("--server must be host:port, [ipv6]:port or unix:/path")
            }
            return endpoint
        }
        if config == Configuration.defaultPath && !FileManager.default.fileExists(atPath: config) {
            return ListenerSettings.defaultTCP.endpoint
        }
        do {
            // A policy listener: a socketmap listener listed first would not understand the request.
            return try Configuration.load(path: config).listeners.first { $0.protocol == .policy }?.endpoint
                ?? ListenerSettings.defaultTCP.endpoint
        } catch {
            for issue in error.issues { printError(issue.description) }
            printError("cannot find the server to ask: give --server, or a readable --config")
            throw ExitStatus.cannotAsk.code
        }
    }

    func run() throws {
        let endpoint = try endpoint()
        let client: PolicyClient
        do { client = try PolicyClient(endpoint: endpoint) } catch {
            printError("cannot connect to \(endpoint): \(error)")
            throw ExitStatus.cannotAsk.code
        }
        let instance = self.instance ?? "backstop.query.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        if stdin {
            var bytes: [UInt8] = []
            while let line = readLine(strippingNewline: true) {
                if line.isEmpty { break }
                bytes.append(contentsOf: line.utf8)
                bytes.append(10)
            }
            bytes.append(10)
            try asking(endpoint) { try client.send(bytes) }
        } else {
            var pairs: [(String, String)] = [
                ("request", "smtpd_access_policy"), ("protocol_state", state), ("protocol_name", "ESMTP"),
                ("client_address", clientAddress), ("client_name", clientName), ("reverse_client_name", clientName),
                ("helo_name", helo), ("sender", sender), ("recipient", recipient),
                ("recipient_count", String(recipientCount)), ("queue_id", ""), ("instance", instance),
                ("size", String(size)), ("sasl_method", saslUsername.isEmpty ? "" : "plain"),
                ("sasl_username", saslUsername), ("sasl_sender", ""),
            ]
            for attribute in attributes {
                guard let eq = attribute.firstIndex(of: "=") else {
                    throw ValidationError("--attribute expects name=value, got \(attribute)")
                }
                pairs.append((String(attribute[..<eq]), String(attribute[attribute.index(after: eq)...])))
            }
            try asking(endpoint) { try client.send(pairs) }
        }
        guard let answer = try asking(endpoint, { try client.readAnswer() }) else {
            printError("the server closed the connection without an answer (protocol error? see its log)")
            throw ExitStatus.cannotAsk.code
        }
        print(answer)
        guard answer.hasPrefix("action="), let action = try? PolicyAction(parsing: String(answer.dropFirst(7))) else {
            throw ExitStatus.cannotAsk.code
        }
        if action.isRefusal { throw (action.isTemporary ? ExitStatus.temporary : ExitStatus.refused).code }
    }

    /// Runs one step of the exchange; a failure (no answer within the client's timeout, a
    /// broken connection) is "could not ask" (exit 3), not a refusal.
    private func asking<T>(_ endpoint: ListenerSettings.Endpoint, _ step: () throws -> T) throws -> T {
        do { return try step() } catch {
            printError("no answer from \(endpoint): \(error)")
            throw ExitStatus.cannotAsk.code
        }
    }
}
