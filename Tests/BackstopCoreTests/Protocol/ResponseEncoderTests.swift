// Encoding answers: one action line whatever the text holds, valid UTF-8, SMTP's limits.

import NIOCore
import Testing
@testable import BackstopCore

@Suite struct ResponseEncoderTests {
    /// The bytes of `encode(_:)`, checked to be the same as the server's in-place path.
    private func wire(_ action: PolicyAction) -> String {
        let bytes = ResponseEncoder.encode(action)
        var buffer = ByteBuffer()
        ResponseEncoder.encode(action, for: nil, into: &buffer)
        #expect(buffer.readableBytesView.elementsEqual(bytes))
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func trimmingSpacesCutsOnlyBlanksAtTheEnds() {
        #expect("  a b\t".trimmingSpaces == "a b")
        #expect(" \t ".trimmingSpaces == "")
        #expect("".trimmingSpaces == "")
        #expect("über  ".trimmingSpaces == "über")
        #expect("\u{3000}x ".trimmingSpaces == "\u{3000}x", "only ASCII blanks")
        #expect("x\n".trimmingSpaces == "x\n")
        #expect(Substring(" é ").trimmingSpaces == "é")
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

    /// Postfix turns `REJECT text` into `554 5.7.1 <recipient>: Recipient address rejected:
    /// text` (smtpd_check.c); with a long recipient and a long text that line passed 512
    /// octets when only the codes were allowed for.
    @Test func aRefusalLeavesRoomForWhatPostfixWritesAroundIt() {
        let recipient = String(repeating: "r", count: 200) + "@example.com"
        let request = PolicyRequest([("request", "smtpd_access_policy"), ("recipient", recipient),
                                     ("sender", "s@example.org"), ("client_address", "192.0.2.1"),
                                     ("client_name", "mail.example.org"), ("helo_name", "mail.example.org")])
        let text = String(repeating: "t", count: 600)
        for action: PolicyAction in [.reject(text), .deferTemporarily("4.7.1 " + text), .deferIfPermit(text),
                                     .reply(code: 550, enhanced: "5.7.1", text: text), .reply(code: 550, enhanced: nil, text: text)] {
            var buffer = ByteBuffer()
            ResponseEncoder.encode(action, for: request, into: &buffer)
            let answer = String(buffer: buffer)
            #expect(answer.hasPrefix("action=") && answer.hasSuffix("\n\n"))
            let body = answer.dropFirst("action=".count).dropLast(2)
            let (keyword, rest) = (body.prefix { $0 != " " }, body.drop { $0 != " " }.dropFirst())
            // What Postfix sends: the code (554 for a keyword), the answer's status code or its
            // default one, the frame, the text.
            let first = rest.prefix { $0 != " " }
            let hasStatus = first.split(separator: ".").count == 3 && first.allSatisfy { $0.isNumber || $0 == "." }
            let status = hasStatus ? String(first) : "5.7.1"
            let text = hasStatus ? String(rest.dropFirst(first.count).dropFirst()) : String(rest)
            let reply = "\(Int(keyword) ?? 554) \(status) <\(recipient)>: Recipient address rejected: \(text)"
            #expect(reply.utf8.count <= ResponseEncoder.maxReplyLine, "\(action.keyword): \(reply.utf8.count) octets")
            #expect(text.utf8.count > 200, "the text is cut only as far as it must be")
        }
        // A name so long that no text fits keeps the text's status code (Postfix's default
        // would say 5.7.1, not 5.1.1), and the keyword alone when there is none.
        let huge = PolicyRequest([("request", "smtpd_access_policy"), ("recipient", String(repeating: "r", count: 600) + "@example.com")])
        var cut = ByteBuffer()
        ResponseEncoder.encode(.reject("5.1.1 User unknown"), for: huge, into: &cut)
        #expect(String(buffer: cut) == "action=REJECT 5.1.1\n\n")
        cut.clear()
        ResponseEncoder.encode(.reject("User unknown"), for: huge, into: &cut)
        #expect(String(buffer: cut) == "action=REJECT\n\n")
        // Texts that are not refusals are not cut for it; without a request, only the codes.
        var buffer = ByteBuffer()
        ResponseEncoder.encode(.warn(text), for: request, into: &buffer)
        #expect(buffer.readableBytes == "action=WARN ".utf8.count + ResponseEncoder.maxReplyLine - 10 + 2)
        #expect(ResponseEncoder.actionText(.reject(text)).utf8.count == "REJECT ".utf8.count + ResponseEncoder.maxReplyLine - 10)
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
        // A table line written with tabs ("key<TAB>REJECT<TAB>text"), as postmap accepts it.
        #expect(try PolicyAction(parsing: "REJECT\tMailbox closed") == .reject("Mailbox closed"))
        #expect(try PolicyAction(parsing: "550\t5.1.1\tUser unknown") == .reply(code: 550, enhanced: "5.1.1", text: "User unknown"))
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "550 4.1.1 mismatch") }
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "FROBNICATE") }
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "PREPEND") }
        // Postfix acts on a PREPEND only when its text is a header line.
        #expect(try PolicyAction(parsing: "PREPEND X-Backstop: listed") == .prepend("X-Backstop: listed"))
        #expect(try PolicyAction(parsing: "PREPEND X-Old-Style : yes") == .prepend("X-Old-Style : yes"))
        for text in ["PREPEND oops", "PREPEND : no name", "PREPEND two words: x", "PREPEND X-Ünicode: x", "PREPEND X-Empty"] {
            #expect(throws: ActionParseError.self, "\(text)") { try PolicyAction(parsing: text) }
        }
        #expect(throws: ActionParseError.self) { try PolicyAction(parsing: "250 ok") }
    }

    @Test func asciiFastPathAnswersLikeTheGeneralPath() {
        var texts = ["", " ", "  a  ", "a", "Received-SPF: pass (mx: domain of a@b designates 192.0.2.1 as permitted sender)",
                     " lead", "trail ", "tab\tinside", "del\u{7F}", "caf\u{E9}", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./"]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let length = Int.random(in: 0...40, using: &generator)
            texts.append(String((0..<length).map { _ in Character(Unicode.Scalar(UInt8.random(in: 0x1E...0x7F, using: &generator))) }))
        }
        for text in texts {
            for limit in [0, 1, 5, 10, 39, 40, 41, 998] {
                #expect(ResponseEncoder.sanitise(text, limit: limit) == ResponseEncoder.sanitiseScalars(text, limit: limit),
                        "\(text.debugDescription) limit \(limit)")
            }
        }
    }

    /// The eight-at-a-time check: every octet value, at every position of a word and of the
    /// tail, next to printable neighbours and next to the octets that borrow or carry.
    @Test func printableCheckFindsEveryOctetAnywhere() {
        for length in [1, 7, 8, 9, 16, 17] {
            for position in 0..<length {
                for octet in UInt8.min...UInt8.max {
                    for filler: UInt8 in [0x20, 0x41, 0x7E] {
                        var bytes = [UInt8](repeating: filler, count: length)
                        bytes[position] = octet
                        let printable = bytes.withUnsafeBytes { ResponseEncoder.isPrintableASCII($0) }
                        #expect(printable == (octet >= 0x20 && octet <= 0x7E), "octet \(octet) at \(position) of \(length)")
                    }
                }
            }
        }
        #expect([UInt8]().withUnsafeBytes { ResponseEncoder.isPrintableASCII($0) })
    }

    /// The server's path writes the same bytes for the answers it special-cases.
    @Test func specialCasedAnswersAreWhole() {
        #expect(wire(.dunno) == "action=DUNNO\n\n")
        #expect(wire(.prepend("  ")) == "action=PREPEND \n\n")
        #expect(wire(.prepend(" X-A: b ")) == "action=PREPEND X-A: b\n\n")
    }
}
