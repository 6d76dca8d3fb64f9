// Encoding answers: one action line whatever the text holds, valid UTF-8, SMTP's limits.

import Testing
@testable import BackstopCore

@Suite struct ResponseEncoderTests {
    private func wire(_ action: PolicyAction) -> String {
        String(decoding: ResponseEncoder.encode(action), as: UTF8.self)
    }

    @Test func injectedNewlinesCannotForgeASecondAnswer() {
        let text = "Go away\n\naction=OK\n\n"
        for action: PolicyAction in [.reject(text), .reply(code: 550, enhanced: "5.7.23", text: text),
                                     .prepend("Received-SPF: fail (\(text))"), .warn(text), .deferIfPermit(text)] {
            let out = wire(action)
            let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.filter { $0.hasPrefix("action=") }.count == 1, "\(out)")
            #expect(lines.count == 3)  // the action line, then the empty line
            #expect(out.hasSuffix("\n\n"))
            #expect(out.dropLast(2).contains("\n") == false)
            #expect(!out.contains("\r"))
        }
    }

    @Test func controlCharactersAreReplaced() {
        let out = wire(.reject("a\u{0}b\u{7}c\u{1B}[31md\r\ne"))
        #expect(out == "action=REJECT a b c [31md  e\n\n")
    }

    @Test func replyLineIsCutAtAUTF8Boundary() {
        let long = String(repeating: "é", count: 600)  // 2 octets each
        let text = ResponseEncoder.actionText(.reply(code: 550, enhanced: "5.1.1", text: long))
        #expect(text.utf8.count <= ResponseEncoder.maxReplyLine)
        #expect(text.hasPrefix("550 5.1.1 éé"))
        #expect(String(validating: Array(text.utf8), as: UTF8.self) != nil)
        let plain = ResponseEncoder.actionText(.reject(String(repeating: "€", count: 400)))
        #expect(plain.utf8.count <= ResponseEncoder.maxReplyLine)
    }

    @Test func prependedHeaderIsCutAt998() {
        let header = "X-Test: " + String(repeating: "x", count: 2000)
        let text = ResponseEncoder.actionText(.prepend(header))
        #expect(text.utf8.count == "PREPEND ".utf8.count + 998)
    }

    @Test func simpleActions() {
        #expect(wire(.dunno) == "action=DUNNO\n\n")
        #expect(wire(.ok) == "action=OK\n\n")
        #expect(wire(.deferTemporarily(nil)) == "action=DEFER\n\n")
        #expect(wire(.reply(code: 450, enhanced: "4.7.1", text: "Slow down")) == "action=450 4.7.1 Slow down\n\n")
        #expect(wire(.hold("review")) == "action=HOLD review\n\n")
        #expect(wire(.discard(nil)) == "action=DISCARD\n\n")
        #expect(wire(.info("seen")) == "action=INFO seen\n\n")
    }

    @Test func parsingActions() throws {
        #expect(try PolicyAction(parsing: "dunno") == .dunno)
        #expect(try PolicyAction(parsing: "550 5.1.1 User unknown") == .reply(code: 550, enhanced: "5.1.1", text: "User unknown"))
        #expect(try PolicyAction(parsing: "450 Try later") == .reply(code: 450, enhanced: nil, text: "Try later"))
        #expect(try PolicyAction(parsing: "DEFER_IF_PERMIT 4.4.3 temp") == .deferIfPermit("4.4.3 temp"))
        #expect(try PolicyAction(parsing: "REJECT") == .reject(nil))
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "550 4.1.1 mismatch") }
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "FROBNICATE") }
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "PREPEND") }
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "250 ok") }
    }
}
