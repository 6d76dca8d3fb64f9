// The worker wire format: what one side encodes the other decodes unchanged, and what a
// taken-over worker might send instead (oversized fields, values out of range, trailing
// octets, truncation at every length) is refused, never trusted.

import Testing
@testable import BackstopSPF

@Suite struct SPFWireTests {
    func body(_ frame: [UInt8]) -> ArraySlice<UInt8> { frame[4...] }

    @Test func evaluationsAndAnswersRoundTrip() throws {
        let record = try SPFRecord.parse(Array("v=spf1 ip4:192.0.2.0/24 a:%{d}/24//64 include:x.example exp=why.%{d} -all".utf8)).get()
        var txt = SPFAnswer(status: .success, ttl: 300)
        txt.recordCount = 1
        txt.spf = .record(record)
        txt.explanation = Array("%{i} may not".utf8)
        var mx = SPFAnswer(status: .success, ttl: 60)
        mx.names = [DNSName(text: "mx1.example")!, DNSName(text: "mx2.example")!]
        mx.recordCount = 2
        var a = SPFAnswer(status: .success, ttl: 5)
        a.addresses = [192, 0, 2, 1, 192, 0, 2, 2]
        a.recordCount = 2
        let answers = [SPFWire.Answer(DNSQuestion(DNSName(text: "example.org")!, .txt), txt),
                       SPFWire.Answer(DNSQuestion(DNSName(text: "example.org")!, .mx), mx),
                       SPFWire.Answer(DNSQuestion(DNSName(text: "mx1.example")!, .a), a),
                       SPFWire.Answer(DNSQuestion(DNSName(text: "gone.example")!, .a), SPFAnswer(status: .nameError))]
        let evaluate = SPFWire.Evaluate(id: 7, identity: .mailfrom, upperNibbles: false, client: [192, 0, 2, 5],
                                        sender: Array("a@example.org".utf8), helo: Array("mail.example.org".utf8), answers: answers)
        let decoded = try SPFWire.decodeToWorker(body(SPFWire.frame(.evaluate(evaluate))))
        guard case .evaluate(let back) = decoded else { Issue.record("\(decoded)"); return }
        #expect(back.id == 7 && back.client == [192, 0, 2, 5] && back.answers.count == 4)
        // The server-only fields (related names) do not travel; everything else does.
        var expected = answers
        expected[0].answer.macros = record.macros
        for (x, y) in zip(back.answers, expected) {
            #expect(x.question == y.question && x.answer.status == y.answer.status && x.answer.names == y.answer.names
                    && x.answer.addresses == y.answer.addresses && x.answer.spf == y.answer.spf && x.answer.explanation == y.answer.explanation)
        }
        let result = SPFWire.Result(result: .fail, mechanism: Array("-all".utf8), explanation: Array("no".utf8), problem: [],
                                    lookups: 3, voidLookups: 1, queries: 5)
        #expect(try SPFWire.decodeFromWorker(body(SPFWire.frame(.done(id: 7, result)))) == .done(id: 7, result))
        let need = SPFWire.FromWorker.need(id: 9, DNSQuestion(DNSName(text: "x.example")!, .txt))
        #expect(try SPFWire.decodeFromWorker(body(SPFWire.frame(need))) == need)
    }

    @Test func aWorkersHostileFramesAreRefused() throws {
        func refused(_ bytes: [UInt8], _ why: String) {
            #expect(throws: SPFWire.DecodeError.self, "\(why)") { try SPFWire.decodeFromWorker(bytes[...]) }
        }
        let good = Array(SPFWire.frame(.done(id: 1, SPFWire.Result(result: .pass, mechanism: Array("mx".utf8)))).dropFirst(4))
        refused(good + [0], "trailing octet")
        for cut in 0..<good.count { refused(Array(good[..<cut]), "cut at \(cut)") }
        var badResult = good
        badResult[5] = 9
        refused(badResult, "result out of range")
        // A mechanism longer than the bound.
        var long: [UInt8] = [0x82, 0, 0, 0, 1, 0, 0, 0, 0, 0]
        long += [0x10, 0x00] + [UInt8](repeating: 0x61, count: 0x1000) + [0, 0, 0, 0]
        refused(long, "oversized mechanism")
        refused([0x42], "unknown type")
        refused([0x81, 0, 0, 0, 1, 3, 0x61, 0x62, 0x63, 0, 1], "name without its final zero")
        refused([0x81, 0, 0, 0, 1, 3, 1, 0x61, 0, 0, 5], "a CNAME question")
        #expect(throws: SPFWire.DecodeError.self) { try SPFWire.frameLength([0xFF, 0xFF, 0xFF, 0xFF][...], limit: SPFWire.maxFromWorker) }
        #expect(throws: SPFWire.DecodeError.self) { try SPFWire.frameLength([0, 0, 0, 0][...], limit: SPFWire.maxFromWorker) }
        #expect(try SPFWire.frameLength([0, 0, 1][...], limit: 10) == nil)
    }

    @Test func resultsAreCutToTheirBounds() {
        let r = SPFWire.Result(result: .fail, mechanism: [UInt8](repeating: 1, count: 10_000),
                               explanation: [UInt8](repeating: 2, count: 10_000), problem: [UInt8](repeating: 3, count: 10_000),
                               lookups: Int.max, voidLookups: -0, queries: Int.max)
        #expect(r.mechanism.count == SPFWire.maxMechanism && r.explanation.count == SPFWire.maxExplanation)
        #expect(r.problem.count == SPFWire.maxProblem && r.lookups == 255 && r.queries == 65_535)
        let outcome = SPFOutcome(result: .permerror, query: SPFQuery(clientAddress: "192.0.2.1", sender: "a@b.example", helo: "h"),
                                 problem: String(repeating: "é", count: 60_000))
        #expect(outcome.problem!.utf8.count <= SPFOutcome.maxProblem)
    }
}
