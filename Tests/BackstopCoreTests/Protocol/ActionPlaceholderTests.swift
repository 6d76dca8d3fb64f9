// Placeholders in configured action texts: what is replaced, what is left as written,
// and that inserted values are never scanned again.

import Testing
@testable import BackstopCore

struct ActionPlaceholderTests {
    let values = ["domain": "example.org", "client": "192.0.2.1", "odd": "{domain}"]

    func fill(_ text: String) -> String { PolicyAction.fill(text) { values[$0] } }

    @Test func knownNamesAreReplacedAndTheRestLeftAsWritten() {
        #expect(fill("550 5.7.23 {domain} does not allow {client}") == "550 5.7.23 example.org does not allow 192.0.2.1")
        #expect(fill("{domain}{client}") == "example.org192.0.2.1")
        #expect(fill("{unknown} {domain") == "{unknown} {domain")
        #expect(fill("{{domain}}") == "{example.org}")
        #expect(fill("no placeholders") == "no placeholders")
        #expect(fill("ünïcode {domain} ✓") == "ünïcode example.org ✓")
        #expect(fill("{dömain} {domain}") == "{dömain} example.org")
        #expect(fill("ends in {") == "ends in {")
        #expect(fill("{}{domain}{") == "{}example.org{")
    }

    @Test func anInsertedValueIsNotScannedAgain() {
        #expect(fill("a {odd} b") == "a {domain} b")
    }

    @Test func everyActionWithTextIsFilled() {
        let lookup: (String) -> String? = { values[$0] }
        #expect(PolicyAction.reply(code: 550, enhanced: "5.7.1", text: "{domain}").filled(lookup) == .reply(code: 550, enhanced: "5.7.1", text: "example.org"))
        #expect(PolicyAction.deferIfPermit("{client}").filled(lookup) == .deferIfPermit("192.0.2.1"))
        #expect(PolicyAction.prepend("X: {domain}").filled(lookup) == .prepend("X: example.org"))
        #expect(PolicyAction.reject(nil).filled(lookup) == .reject(nil))
        #expect(PolicyAction.dunno.filled(lookup) == .dunno)
    }
}
