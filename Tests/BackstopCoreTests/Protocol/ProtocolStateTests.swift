// protocol_state from octets: every stage by its wire spelling (the RCPT fast path
// included), table positions, and what is not a stage.

import Testing
@testable import BackstopCore

@Suite struct ProtocolStateTests {
    private func state(_ text: String) -> ProtocolState {
        Array(text.utf8).withUnsafeBytes { ProtocolState(bytes: $0) }
    }

    @Test func everyStageFromItsOctets() {
        for (position, stage) in ProtocolState.allCases.enumerated() {
            #expect(state(stage.rawValue) == stage)
            #expect(stage.index == position)
        }
        #expect(state("rcpt") == .rcpt, "other spellings go through the general path")
        for text in ["RCPX", "RCP", "RCPTS", "TPCR", "", "\u{0}CPT"] { #expect(state(text) == .other, "\(text.debugDescription)") }
    }
}
