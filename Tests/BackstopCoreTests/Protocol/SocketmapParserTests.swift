// The socketmap netstring parser and reply encoder by value: requests in any split,
// every way a netstring can be wrong, the length bound before the payload, and replies
// whose data cannot break the framing.

import Testing
@testable import BackstopCore

private func parse(_ chunks: [String], maxLength: Int = SocketmapParser.defaultMaxLength) throws -> [SocketmapRequest] {
    var parser = SocketmapParser(maxLength: maxLength)
    var out: [SocketmapRequest] = []
    for chunk in chunks {
        try Array(chunk.utf8).withUnsafeBytes { try parser.feed($0) { out.append($0) } }
    }
    return out
}

@Suite struct SocketmapParserTests {
    @Test func requestsInAnySplit() throws {
        let text = "28:recipients alice@example.org,12:batv-sign \"\","
        let whole = try parse([text])
        #expect(whole == [SocketmapRequest(map: "recipients", key: "alice@example.org"), SocketmapRequest(map: "batv-sign", key: "\"\"")])
        #expect(try parse(text.map { String($0) }) == whole)
        #expect(try parse(["28:recipients alice", "@example.org", ",12:batv-sign \"\","]) == whole)
        #expect(try parse(["9:m key one,"]) == [SocketmapRequest(map: "m", key: "key one")], "the key may hold spaces")
    }

    @Test func malformedNetstringsThrow() {
        for bad in ["x", ":", "5x", "0:,", "3:abc;", "4: abc,", "3:abc,x"] {
            #expect(throws: ProtocolError.self, "\(bad)") { try parse([bad]) }
        }
        #expect(throws: ProtocolError.netstringTooLong(limit: 10)) { try parse(["11:"], maxLength: 10) }
        #expect(throws: ProtocolError.netstringTooLong(limit: 10)) { try parse(["99999999999999999999999"], maxLength: 10) }
        #expect(throws: Never.self) { try parse(["10:"], maxLength: 10) }
        #expect(throws: ProtocolError.netstringTooLong(limit: 10)) { try parse(["000000"], maxLength: 10) }
        #expect(throws: Never.self) { try parse(["00009:"], maxLength: 10) }
        #expect(SocketmapParser().maxLength == 10_240, "Postfix's longest key (10,000) and a map name")
    }

    @Test func idleOnlyBetweenRequests() throws {
        var parser = SocketmapParser(maxLength: 100)
        #expect(parser.isIdle)
        try Array("1".utf8).withUnsafeBytes { try parser.feed($0) { _ in } }
        #expect(!parser.isIdle)
        try Array("0:recip x@yz,".utf8).withUnsafeBytes { try parser.feed($0) { _ in } }
        #expect(parser.isIdle)
    }

    @Test func repliesAreNetstringsWithSafeData() {
        #expect(String(decoding: SocketmapReply.ok("a@b").encoded, as: UTF8.self) == "6:OK a@b,")
        #expect(String(decoding: SocketmapReply.notFound.encoded, as: UTF8.self) == "9:NOTFOUND ,")
        #expect(String(decoding: SocketmapReply.temp("x\r\ny").encoded, as: UTF8.self) == "9:TEMP x??y,")
        #expect(String(decoding: SocketmapReply.perm("p").encoded, as: UTF8.self) == "6:PERM p,")
        #expect(SocketmapReply.ok(String(repeating: "a", count: 10_000)).encoded.count == "4099:OK ,".utf8.count + SocketmapReply.maxData)
        // A long value is cut between characters, never inside one (Postfix wants UTF-8).
        for prefix in ["", "x", "xy", "xyz"] {
            let encoded = SocketmapReply.ok(prefix + String(repeating: "é€😀", count: 1_000)).encoded
            let payload = encoded.drop(while: { $0 != UInt8(ascii: ":") }).dropFirst().dropLast()
            #expect(String(validating: payload, as: UTF8.self) != nil, "cut inside a character after \(prefix.count) octets")
            #expect(payload.count > SocketmapReply.maxData - 4 && payload.count <= SocketmapReply.maxData + 3)
        }
    }
}
