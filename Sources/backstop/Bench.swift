// `backstop bench`: measures what a deployment does under Postfix-like load. It targets a
// running server (--target) or starts one in this process on a configuration file, then
// reports req/s, latency percentiles and the answers by action.

import ArgumentParser
import BackstopCore
import BackstopServer
import BackstopSPF
import Foundation
import Logging
import NIOCore
import NIOPosix

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure throughput and latency with Postfix-like load.",
        discussion: """
        Without --target, a server is started in this process on --config's first listener's
        address, on --port (by default a free port the system picks).
        Mix files use the policyload format: name=value blocks separated by blank lines, with
        {rand:A-B} {rand:N} {pick:a|b} {seq} {seqhex} {conn} placeholders.
        """)

    @Option(help: "A running server to measure (host:port or unix:/path).") var target: String?
    @Option(name: .shortAndLong, help: "Configuration for the in-process server.") var config = "examples/backstop.toml"
    @Option(name: [.customShort("C"), .long], help: "Simultaneous connections (Postfix smtpd processes).") var connections = 16
    @Option(name: .shortAndLong, help: "Seconds measured.") var duration = 10
    @Option(name: .shortAndLong, help: "Seconds of warm-up before measuring.") var warmup = 2
    @Option(name: .shortAndLong, help: "Mix file; without it a built-in RCPT mix is used.") var mix: String?
    @Flag(name: [.customShort("N"), .long], help: "Open a new connection for every request.") var newConnection = false
    @Option(help: "Label printed with the results.") var label = "backstop"
    @Option(help: "Port of the in-process server (0: a free port the system picks).") var port = 0

    func validate() throws {
        guard (1...10_000).contains(connections) else { throw ValidationError("--connections must be from 1 to 10000") }
        guard (1...86_400).contains(duration) else { throw ValidationError("--duration must be from 1 to 86400 seconds") }
        guard (0...3_600).contains(warmup) else { throw ValidationError("--warmup must be from 0 to 3600 seconds") }
        guard (0...65_535).contains(port) else { throw ValidationError("--port must be from 0 to 65535") }
    }

    func run() throws {
        let command = self
        try runBlocking { try await command.measure() }
    }

    func measure() async throws {
        SPFProcesses.registerRunningExecutable()  // SPF evaluations run in `backstop spf-worker` processes
        let mixText = try mix.map { try String(contentsOfFile: $0, encoding: .utf8) } ?? BenchMix.builtinRcpt
        let requestMix = try BenchMix(text: mixText)
        var server: PolicyServer?
        var endpoint: ListenerSettings.Endpoint
        if let target {
            guard let parsed = ListenerSettings.parseEndpoint(target) else {
                throw ValidationError("--target must be host:port, [ipv6]:port or unix:/path")
            }
            endpoint = parsed
        } else {
            var logger = Logger(label: "backstop.bench")
            logger.logLevel = .warning
            var loaded = try Configuration.load(path: config)
            loaded.log.level = "warning"
            if case .tcp(let host, _) = loaded.listeners.first?.endpoint {
                loaded.listeners = [ListenerSettings(endpoint: .tcp(host: host, port: port), mode: 0o660, owner: nil, group: nil, allow: NetworkList([]))]
            }
            let startedAt = NIODeadline.now()
            let engine = try EngineBuilder.build(loaded, previous: nil, logger: logger)
            let s = PolicyServer(config: loaded, engine: engine, logger: logger)
            try await s.start()
            print("in-process server on \(s.boundAddresses[0]) (config \(config)) ready after \(DurationText.format((NIODeadline.now() - startedAt)))")
            server = s
            endpoint = ListenerSettings.parseEndpoint(s.boundAddresses[0])!
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let run = BenchRun(mix: requestMix, endpoint: endpoint, warmup: .seconds(Int64(warmup)),
                           duration: .seconds(Int64(duration)), newConnection: newConnection)
        let tally = try await BenchLoad.run(run, connections: connections, group: group)
        try await group.shutdownGracefully()
        report(tally)
        if let server { await server.stop() }
    }

    func report(_ tally: BenchTally) {
        let h = tally.latencies
        let count = Int(h.totalCount)
        let rate = Double(count) / Double(duration)
        print("== \(label)  connections=\(connections) mode=\(newConnection ? "new-connection" : "persistent") duration=\(duration)s warmup=\(warmup)s")
        print(String(format: "   %d answers in %ds -> %.1f req/s", count, duration, rate))
        print("   latency us: p50=\(h.valueAtPercentile(50)) p90=\(h.valueAtPercentile(90)) p99=\(h.valueAtPercentile(99)) p99.9=\(h.valueAtPercentile(99.9)) max=\(h.maxRecorded)")
        print("   errors=\(tally.errors) connects=\(tally.connects)")
        for (action, n) in tally.actions.sorted(by: { $0.value > $1.value }) {
            print("   \(String(n).leftPad(10))  \(action)")
        }
        if let rss = residentMemory() { print("   rss of this process: \(rss / 1024) MiB") }
    }
}

extension String {
    func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}

/// VmRSS of this process in KiB, from /proc.
func residentMemory() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "")
    }
    return nil
}
