// Starts Tests/Support/dns_server.py (a real DNS server on loopback) for the SPF tests and
// talks to it over its stdin/stdout control lines. Closing stdin stops it, so a test that
// dies never leaves it running. The blocking pipe reads run on a thread of their own, not
// on Swift concurrency's few shared threads (other tests' timers would starve).

import Foundation
@testable import BackstopSPF

final class LoopbackDNSServer: @unchecked Sendable {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffer: [UInt8] = []
    let port: Int

    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    static var script: String { packageRoot.appendingPathComponent("Tests/Support/dns_server.py").path }

    private static let io = DispatchQueue(label: "backstop.test.dns-server")

    /// Serves `zone` (name -> records as in rfc7208-tests.yml) or the scenarios of `suite`.
    static func start(zone: [String: Any]? = nil, suite: String? = nil, delayMilliseconds: Int = 0) async throws -> LoopbackDNSServer {
        nonisolated(unsafe) let zone = zone
        return try await withCheckedThrowingContinuation { continuation in
            io.async {
                continuation.resume(with: Result { try LoopbackDNSServer(zone: zone, suite: suite, delayMilliseconds: delayMilliseconds) })
            }
        }
    }

    private init(zone: [String: Any]? = nil, suite: String? = nil, delayMilliseconds: Int = 0) throws {
        var arguments = [LoopbackDNSServer.script, "--delay-ms", String(delayMilliseconds)]
        if let zone {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-zone-\(UUID().uuidString).json")
            try JSONSerialization.data(withJSONObject: zone).write(to: file)
            arguments += ["--zone", file.path]
        }
        if let suite { arguments += ["--suite", suite] }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        guard let line = LoopbackDNSServer.readLine(output.fileHandleForReading, &buffer), let port = Int(line) else {
            process.terminate()
            throw ServerError(description: "dns_server.py did not start (is dnslib installed? pip install dnslib)")
        }
        self.port = port
    }

    struct ServerError: Error, CustomStringConvertible { let description: String }

    var resolver: DNSResolverAddress { DNSResolverAddress(host: "127.0.0.1", port: port) }

    /// Sends one control command and returns its one-line answer.
    @discardableResult
    func command(_ line: String) async -> String {
        await withCheckedContinuation { continuation in
            LoopbackDNSServer.io.async { continuation.resume(returning: self.commandNow(line)) }
        }
    }

    private func commandNow(_ line: String) -> String {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        return LoopbackDNSServer.readLine(output.fileHandleForReading, &buffer) ?? ""
    }

    func queryCount() async -> Int { Int(await command("count")) ?? -1 }

    private static func readLine(_ handle: FileHandle, _ buffer: inout [UInt8]) -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeFirst(newline + 1)
                return line
            }
            let data = handle.availableData
            if data.isEmpty { return nil }
            buffer += data
        }
    }

    /// Closes stdin, which stops the server; does not wait for it to exit.
    func stop() {
        try? input.fileHandleForWriting.close()
    }

    deinit {
        if process.isRunning {
            try? input.fileHandleForWriting.close()
            process.terminate()
        }
    }
}

/// Runs blocking work (the DNS client waits on sockets) on a thread of its own, so the few
/// threads Swift concurrency shares between tests stay free.
func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}
