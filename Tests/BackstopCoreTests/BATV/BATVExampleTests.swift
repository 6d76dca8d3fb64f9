// examples/batv.toml is valid and says what docs/batv.md says it does.

import Foundation
import Testing
@testable import BackstopCore

@Suite struct BATVExampleTests {
    @Test func theExampleIsValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent("examples/batv.toml").path
        let config = try Configuration.parse(try String(contentsOfFile: path, encoding: .utf8), file: path)
        #expect(config.warnings.isEmpty, "\(config.warnings)")
        #expect(config.listeners.map(\.protocol) == [.policy, .socketmap])
        let batv = try #require(config.checks["batv"] as? BATVSettings)
        #expect(batv.keyFile == root.appendingPathComponent("examples/batv-keys").path)
        #expect(batv.domains == ["example.com"])
        #expect(batv.lifetimeDays == BATVSettings.defaultLifetimeDays)
        #expect(batv.verifySince == nil)
        #expect(batv.exempt.contains("postmaster@example.com") && batv.exempt.contains("abuse@example.com"))
        #expect(batv.excludeSenders.isEmpty)
        #expect(batv.action == BATVSettings.defaultAction)
        #expect(!batv.testMode && batv.failAction == .dunno)
    }
}
