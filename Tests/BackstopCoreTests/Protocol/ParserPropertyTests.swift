// Property tests: whatever bytes arrive, in whatever pieces, the parser never crashes,
// never holds more than its limits allow, and splitting never changes the result.

import Testing
import PropertyBased
@testable import BackstopCore

@Suite struct ParserPropertyTests {
    static let alphabet: [UInt8] = Array("request=smtpd_access_policy\nsender=recipient=\n\n=a\r\0".utf8) + [0xFF, 0xC3, 0x80, 0x00]

    @Test func randomStreamsNeverCrashOrOverAllocate() async {
        let limits = ProtocolLimits(maxLineLength: 256, maxAttributes: 16, maxRequestBytes: 1024)
        await propertyCheck(count: 300, input: Gen<UInt8?>.element(of: Self.alphabet).map { $0 ?? 0 }.array(of: 0...3000),
                            Gen.int(in: 1...64)) { stream, chunk in
            var parser = RequestParser(limits: limits)
            var index = 0
            while index < stream.count {
                let end = min(stream.count, index + chunk)
                do {
                    try stream[index..<end].withUnsafeBytes { raw in
                        try parser.feed(raw) { request in
                            #expect(request.storage.count <= limits.maxRequestBytes)
                            #expect(request.attributeCount <= limits.maxAttributes)
                        }
                    }
                } catch {
                    break  // a protocol error ends the connection: fine, as long as we got here
                }
                #expect(parser.bufferedBytes <= limits.maxRequestBytes)
                index = end
            }
        }
    }

    @Test func arbitraryBytesNeverCrash() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...255).array(of: 0...2000)) { values in
            var parser = RequestParser(limits: .init(maxLineLength: 300, maxAttributes: 20, maxRequestBytes: 1500))
            let stream = values.map { UInt8($0) }
            _ = try? stream.withUnsafeBytes { try parser.feed($0) { _ in } }
            #expect(parser.bufferedBytes <= 1500)
        }
    }

    @Test func splittingDoesNotChangeWhatIsParsed() async {
        let request = Array("request=smtpd_access_policy\nprotocol_state=RCPT\nsender=x@y\nrecipient=z@w\n\n".utf8)
        await propertyCheck(count: 200, input: Gen.int(in: 1...5), Gen.int(in: 1...request.count * 3)) { copies, cut in
            let stream = Array((0..<copies).map { _ in request }.joined())
            let split = min(cut, stream.count)
            var parser = RequestParser()
            var seen: [String] = []
            try? stream[..<split].withUnsafeBytes { try parser.feed($0) { seen.append($0.recipient) } }
            try? stream[split...].withUnsafeBytes { try parser.feed($0) { seen.append($0.recipient) } }
            #expect(seen == Array(repeating: "z@w", count: copies))
        }
    }
}
