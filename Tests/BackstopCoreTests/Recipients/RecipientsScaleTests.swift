// Scale: a million generated addresses load, every one is found, and lookups allocate
// nothing. Debug builds are far slower than release, so they load fewer; the full
// million (and its timing against the 2 s / 200 MB target) runs in release builds and
// in `backstop bench` through RecipientLoadBenchmark.run.

import Foundation
import Testing
@testable import BackstopCore

@Suite struct RecipientsScaleTests {
    #if DEBUG
    static let entries = 200_000
    #else
    static let entries = 1_000_000
    #endif

    @Test func generatedTableLoads() throws {
        let dir = try TableDirectory()
        let result = try RecipientLoadBenchmark.run(entries: Self.entries, directory: dir.path)
        print("recipients scale:", result)
        #expect(result.entries == Self.entries)
        #expect(result.tableBytes < Self.entries * 100)
        #if !DEBUG
        #expect(result.loadSeconds < 2)
        #expect(result.peakResidentBytes < 200 * 1_048_576)
        #endif
    }
}
