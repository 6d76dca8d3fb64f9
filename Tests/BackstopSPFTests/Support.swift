// What the SPF tests share: where the built `backstop` binary is (its `spf-worker` mode
// runs the real workers), a verifier against a loopback DNS server, and a shared logger.

import Foundation
import Logging
import NIOCore
@testable import BackstopSPF

let packageRoot = LoopbackDNSServer.packageRoot.path
/// The `backstop` built beside the running tests (`.build/debug` or `.build/release`).
let backstopBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    .deletingLastPathComponent().appendingPathComponent("backstop").path
let testLogger = Logger(label: "test")

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Verifier settings against `dns`.
func verifierSettings(_ dns: LoopbackDNSServer, workers: Int = 1, dnsTimeout: TimeAmount = .seconds(2),
                      deadline: TimeAmount = .seconds(5), queue: Int = 100, cacheTTL: TimeAmount = .seconds(60)) -> SPFVerifier.Settings {
    // Verifiers that SPFSettings.makeCheck builds run the freshly built binary too.
    SPFProcesses.executable = backstopBinary
    var s = SPFVerifier.Settings()
    s.resolvers = [dns.resolver]
    s.workers = workers
    s.dnsTimeout = dnsTimeout
    s.evaluationDeadline = deadline
    s.queueSize = queue
    s.receiver = "mx.test"
    s.resultCacheTTL = cacheTTL
    return s
}

/// A verifier whose workers run the freshly built binary.
func makeVerifier(_ settings: SPFVerifier.Settings, executable: String = backstopBinary) throws -> SPFVerifier {
    guard FileManager.default.isExecutableFile(atPath: executable) else {
        throw TestError("\(executable) is missing: run swift build --build-tests first")
    }
    return SPFVerifier(settings: settings, logger: testLogger, executable: executable, spawner: DirectSpawner())
}
