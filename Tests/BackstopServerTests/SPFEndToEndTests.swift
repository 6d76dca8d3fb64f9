// SPF end to end over a real socket: the server built from a configuration with an [spf]
// section, resolving against Tests/Support/dns_server.py on loopback. A fail is refused, a
// pass gets its Received-SPF header once per message.

import Foundation
import Logging
import NIOCore
import Testing
@testable import BackstopCore
@testable import BackstopServer
@testable import BackstopSPF

@Suite(.serialized) struct SPFEndToEndTests {
    @Test func failRefusedPassWithHeaderOncePerMessage() async throws {
        let dns = try await SPFTestDNS.start(zone: [
            "example.org": [["TXT": "v=spf1 ip4:192.0.2.0/24 -all"]],
        ])
        defer { dns.stop() }
        let toml = """
        [[listen]]
        address = "127.0.0.1:0"
        [policy]
        rcpt = ["spf"]
        [spf]
        resolvers = ["127.0.0.1:\(dns.port)"]
        receiver = "mx.test"
        dns_timeout = "1s"
        evaluation_deadline = "3s"
        """
        SPFSettings.register()
        let config = try Configuration.parse(toml, file: "test.toml")
        let engine = try EngineBuilder.build(config, previous: nil, logger: testLogger)
        let server = PolicyServer(config: config, engine: engine, logger: testLogger)
        try await server.start()
        let client = try PolicyClient(endpoint: ListenerSettings.parseEndpoint(server.boundAddresses[0])!, timeoutSeconds: 10)

        func request(client address: String, instance: String, recipient: String) -> [(String, String)] {
            [("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("client_address", address),
             ("helo_name", "mail.example.org"), ("sender", "alice@example.org"), ("recipient", recipient),
             ("instance", instance)]
        }
        let refused = try client.ask(request(client: "198.51.100.1", instance: "m1", recipient: "b@local.test"))
        #expect(refused?.hasPrefix("action=550 5.7.23 SPF fail: example.org does not allow 198.51.100.1") == true, "\(refused ?? "no answer")")
        let pass = try client.ask(request(client: "192.0.2.25", instance: "m2", recipient: "b@local.test"))
        #expect(pass == "action=PREPEND Received-SPF: pass (mx.test: domain of alice@example.org designates 192.0.2.25 as permitted sender) client-ip=192.0.2.25; envelope-from=\"alice@example.org\"; helo=mail.example.org; receiver=mx.test; identity=mailfrom; mechanism=\"ip4:192.0.2.0/24\";")
        let second = try client.ask(request(client: "192.0.2.25", instance: "m2", recipient: "c@local.test"))
        #expect(second == "action=DUNNO")
        await server.stop()
        (engine.checks["spf"] as? SPFCheck)?.verifier.shutdown()
    }
}

/// Tests/Support/dns_server.py serving one zone; stopped by closing its stdin.
final class SPFTestDNS: @unchecked Sendable {
    let process = Process()
    let input = Pipe()
    let port: Int

    private init(zone: [String: Any]) throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-zone-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: zone).write(to: file)
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", root.appendingPathComponent("Tests/Support/dns_server.py").path, "--zone", file.path]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        var text = ""
        while !text.contains("\n") {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
        }
        guard let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            process.terminate()
            throw ServerError("dns_server.py did not start (pip install dnslib)")
        }
        self.port = port
    }

    static func start(zone: [String: Any]) async throws -> SPFTestDNS {
        nonisolated(unsafe) let zone = zone
        return try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try SPFTestDNS(zone: zone) }) }.start()
        }
    }

    func stop() { try? input.fileHandleForWriting.close() }
}
