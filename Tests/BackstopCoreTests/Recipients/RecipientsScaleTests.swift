// Scale: a million generated addresses load and the generated addresses are found.
// Debug builds are far slower than release, so they time fewer lookups and do not hold
// the load to the 2 s / 200 MB target; release builds and `backstop bench` (through
// RecipientLoadBenchmark.run) do.

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
        #if !DEBUG
        #expect(result.loadSeconds < 2)
        #expect(result.peakResidentBytes < 200 * 1_048_576)
        #endif
    }
}
