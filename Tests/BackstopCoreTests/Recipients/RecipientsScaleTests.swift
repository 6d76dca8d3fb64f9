// Scale: a million generated addresses load and the generated addresses are found.
// Debug builds are far slower than release, so they make fewer lookups. How fast the load
// is and how much memory it takes is the benchmark's to say (bench/run.sh's start-up and
// memory scenarios; docs/benchmarks.md), not a timed test's.

import Foundation
import Testing
@testable import BackstopCore

@Suite struct RecipientsScaleTests {
    static let entries = 1_000_000
    #if DEBUG
    static let probes = 50_000
    #else
    static let probes = 1_000_000
    #endif

    @Test func generatedTableLoads() throws {
        let dir = try RecipientTableDirectory()
        let result = try RecipientLoadBenchmark.run(entries: Self.entries, probes: Self.probes, directory: dir.path)
        print("recipients scale:", result)
        #expect(result.entries == Self.entries)
        #expect(result.tableBytes < Self.entries * 100)
    }
}
