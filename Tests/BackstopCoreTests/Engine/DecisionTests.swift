// Decision keeps its fields behind one shared reference: a copy changed afterwards must not
// change the decision it was copied from (copy on write), and an unshared one is changed in
// place.

import Testing
@testable import BackstopCore

struct DecisionTests {
    @Test func aChangedCopyLeavesTheOriginalAsItWas() {
        let original = Decision(action: .dunno, check: "spf", reason: "spf=pass")
        var copy = original
        copy.deadlineExpired = true
        copy.reason = "deadline_expired"
        copy.action = .reject("5.7.1 no")
        copy.trail.append(check: "spf", reason: "spf=pass")
        #expect(!original.deadlineExpired && original.reason == "spf=pass" && original.action == .dunno && original.trail.count == 0)
        #expect(copy.deadlineExpired && copy.reason == "deadline_expired" && copy.action == .reject("5.7.1 no") && copy.trail.count == 1)
        var alone = Decision(action: .dunno, check: nil, reason: "no_opinion")
        alone.check = "recipients"
        #expect(alone.check == "recipients")
    }
}
