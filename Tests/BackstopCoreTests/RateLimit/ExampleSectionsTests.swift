// The [ratelimit] and [bounces] sections of examples/backstop.toml are valid and say what
// the documentation says they do.

import Testing
import Foundation
@testable import BackstopCore

@Suite struct ExampleSectionsTests {
    @Test func exampleRateLimitAndBouncesSectionsAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent("examples/backstop.toml").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        do {
            let config = try Configuration.parse(text, file: path)
            let ratelimit = try #require(config.checks["ratelimit"] as? RateLimitSettings)
            #expect(ratelimit.rules.map(\.name) == ["per_client", "per_sasl_user", "null_sender"])
            #expect(ratelimit.rules[0].parameters.emissionInterval == 18_000_000_000, "200/1h: one every 18 s")
            #expect(ratelimit.rules[1].parameters.burst == 100)
            #expect(ratelimit.rules[2].state == .endOfMessage && ratelimit.rules[2].onlyNullSender)
            let bounces = try #require(config.checks["bounces"] as? BouncesSettings)
            #expect(bounces.action == BouncesSettings.defaultAction)
        } catch let error as ConfigError {
            let mine = error.issues.filter { $0.key.hasPrefix("ratelimit") || $0.key.hasPrefix("bounces") }
            #expect(mine.isEmpty, "\(mine)")
        } catch {
            Issue.record("\(error)")
        }
    }
}
