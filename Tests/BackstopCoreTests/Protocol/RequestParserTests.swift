// The incremental parser against split reads, batched requests, limits, bad grammar and
// bytes that are not UTF-8.

import Testing
@testable import BackstopCore

private func parse(_ chunks: [[UInt8]], limits: ProtocolLimits = .defaults) throws -> [PolicyRequest] {
    var parser = RequestParser(limits: limits)
    var out: [PolicyRequest] = []
    for chunk in chunks {
        try chunk.withUnsafeBytes { try parser.feed($0) { out.append($0) } }
    }
    return out
}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

private let sample = "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@example.org\nrecipient=b@example.com\nclient_address=192.0.2.7\nfuture_attribute=kept\n\n"

@Suite struct RequestParserTests {
    @Test func parsesOneRequest() throws {
        let requests = try parse([bytes(sample)])
        #expect(requests.count == 1)
        let r = requests[0]
        #expect(r.sender == "a@example.org")
        #expect(r.recipient == "b@example.com")
        #expect(r.clientAddress == "192.0.2.7")
        #expect(r.protocolState == .rcpt)
        #expect(r.value(named: "future_attribute") == "kept")
        #expect(r.attributeCount == 6)
    }

    @Test func requestSplitAtEveryByteGivesTheSameResult() throws {
        let all = bytes(sample)
        for cut in 1..<all.count {
            let requests = try parse([Array(all[..<cut]), Array(all[cut...])])
            #expect(requests.count == 1, "cut at \(cut)")
            #expect(requests.first?.recipient == "b@example.com")
        }
        let oneByOne = try parse(all.map { [$0] })
        #expect(oneByOne.count == 1)
        #expect(oneByOne[0].sender == "a@example.org")
    }

    @Test func manyRequestsInOneRead() throws {
        var all: [UInt8] = []
        for i in 0..<50 {
            all += bytes("request=smtpd_access_policy\nrecipient=user\(i)@example.com\n\n")
        }
        let requests = try parse([all])
        #expect(requests.count == 50)
        #expect(requests.map(\.recipient) == (0..<50).map { "user\($0)@example.com" })
    }

    @Test func missingRequestAttributeIsAnError() {
        #expect(throws: ProtocolError.missingRequestAttribute) {
            try parse([bytes("protocol_state=RCPT\nsender=a@b\n\n")])
        }
    }

    @Test func wrongRequestTypeIsAnError() {
        #expect(throws: ProtocolError.unsupportedRequest("junk")) {
            try parse([bytes("request=junk\n\n")])
        }
    }

    @Test func lineWithoutEqualsIsAnError() {
        #expect(throws: ProtocolError.missingEquals(line: 2)) {
            try parse([bytes("request=smtpd_access_policy\nGET / HTTP/1.0\n\n")])
        }
        #expect(throws: ProtocolError.emptyName(line: 1)) {
            try parse([bytes("=value\n\n")])
        }
    }

    @Test func lineLengthLimitHoldsBeforeTheNewlineArrives() {
        let limits = ProtocolLimits(maxLineLength: 300, maxAttributes: 100, maxRequestBytes: 100_000)
        var parser = RequestParser(limits: limits)
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 200)
        #expect(throws: ProtocolError.lineTooLong(limit: 300)) {
            for _ in 0..<10 {
                try chunk.withUnsafeBytes { try parser.feed($0) { _ in } }
                #expect(parser.bufferedBytes <= 302)
            }
        }
    }

    @Test func attributeCountLimit() {
        let limits = ProtocolLimits(maxLineLength: 300, maxAttributes: 20, maxRequestBytes: 100_000)
        var text = "request=smtpd_access_policy\n"
        for i in 0..<25 { text += "x\(i)=y\n" }
        #expect(throws: ProtocolError.tooManyAttributes(limit: 20)) {
            try parse([bytes(text + "\n")], limits: limits)
        }
    }

    @Test func requestSizeLimit() {
        let limits = ProtocolLimits(maxLineLength: 1000, maxAttributes: 1000, maxRequestBytes: 2048)
        var text = "request=smtpd_access_policy\n"
        for i in 0..<100 { text += "attribute\(i)=value value value\n" }
        #expect(throws: ProtocolError.requestTooLarge(limit: 2048)) {
            try parse([bytes(text + "\n")], limits: limits)
        }
    }

    @Test func invalidUTF8AndBinaryValuesDoNotCrash() throws {
        var raw = bytes("request=smtpd_access_policy\nsender=")
        raw += [0xFF, 0xFE, 0xC3, 0x28, 0x00, 0x01, 0x80]
        raw += bytes("@example.org\nrecipient=\n\n")
        let requests = try parse([raw])
        #expect(requests.count == 1)
        #expect(requests[0].sender.hasSuffix("@example.org"))
        #expect(requests[0].sender.contains("\u{FFFD}"))
        #expect(requests[0].recipient == "")
        #expect(requests[0].has(.recipient))
        #expect(!requests[0].has(.saslUsername))
    }

    @Test func duplicateNamesLastOneWins() throws {
        let requests = try parse([bytes("request=smtpd_access_policy\nsender=first@a\nsender=second@b\n\n")])
        #expect(requests[0].sender == "second@b")
        #expect(requests[0].attributes.filter { $0.name == "sender" }.count == 2)
    }

    @Test func valuesMayContainEqualsSigns() throws {
        let requests = try parse([bytes("request=smtpd_access_policy\nccert_subject=CN=a=b\n\n")])
        #expect(requests[0][.ccertSubject] == "CN=a=b")
    }

    @Test func crlfIsTolerated() throws {
        let requests = try parse([bytes("request=smtpd_access_policy\r\nsender=a@b\r\n\r\n")])
        #expect(requests.count == 1)
        #expect(requests[0].sender == "a@b")
    }

    @Test func parserIsIdleOnlyBetweenRequests() throws {
        var parser = RequestParser()
        #expect(parser.isIdle)
        try bytes("request=smtpd_access_policy\n").withUnsafeBytes { try parser.feed($0) { _ in } }
        #expect(!parser.isIdle)
        try bytes("\n").withUnsafeBytes { try parser.feed($0) { _ in } }
        #expect(parser.isIdle)
    }
}
