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

    /// The largest answers the DNS layer can make each fit one frame the worker accepts, with
    /// the largest sender and HELO: a record of bare "a" terms (the most terms per octet),
    /// one of ip6 networks with prefixes, and at most as many addresses as are kept.
    @Test func theLargestAnswersFitAFrame() throws {
        let terms = ["a", "a:x.y/1//1", "ip6:::", "ip6:::1/1", "-ip4:1.1.1.1/1"]
        for term in terms {
            var text = "v=spf1"
            while text.utf8.count + 1 + term.utf8.count <= SPFRecord.maxLength { text += " " + term }
            let record = try SPFRecord.parse(Array(text.utf8)).get()
            var answer = SPFAnswer(status: .success, ttl: 300)
            answer.recordCount = 1
            answer.spf = .record(record)
            answer.explanation = [UInt8](repeating: 0x61, count: SPFAnswer.maxExplanationSource)
            answer.addresses = [UInt8](repeating: 1, count: 65_536)
            answer.names = Array(repeating: DNSName(text: String(repeating: "n", count: 63) + ".example")!, count: DNSMessage.maxNamesKept)
            let name = DNSName(text: (0..<4).map { _ in String(repeating: "q", count: 61) }.joined(separator: "."))!
            let evaluate = SPFWire.Evaluate(id: 1, identity: .mailfrom, upperNibbles: false, client: [UInt8](repeating: 0, count: 16),
                                            sender: [UInt8](repeating: 0x73, count: SPFWire.maxSender),
                                            helo: [UInt8](repeating: 0x68, count: SPFWire.maxHelo),
                                            answers: [SPFWire.Answer(DNSQuestion(name, .txt), answer)])
            let frame = SPFWire.frame(.evaluate(evaluate))
            // Room left for the answers sent ahead (SPFDNS.maxPrefetchCost, 96 KiB, and their questions).
            #expect(frame.count - 4 + 96 * 1024 + 64 * 300 <= SPFWire.maxToWorker, "\(term): \(frame.count) octets")
            guard case .evaluate(let back) = try SPFWire.decodeToWorker(body(frame)) else { Issue.record("not an evaluation"); continue }
            #expect(back.answers.first?.answer.spf == answer.spf, "\(term): \(record.directives.count) terms")
        }
    }

    /// What the server does with a frame that would pass the worker's limit anyway: the
    /// answers sent ahead are left out, and an answer that cannot fit ends its evaluation
    /// (never the worker).
    @Test func aFrameOverTheLimitLeavesOutTheAnswersSentAhead() {
        func answer(_ octets: Int) -> SPFWire.Answer {
            var a = SPFAnswer(status: .success, ttl: 60)
            a.addresses = [UInt8](repeating: 7, count: octets)
            return SPFWire.Answer(DNSQuestion(DNSName(text: "a\(octets).example")!, .a), a)
        }
        var answers = [answer(65_536), answer(65_536), answer(65_536)]
        #expect(SPFWorkerConnection.fitted(&answers, { .answers(id: 1, $0) })?.count ?? 0 > 3 * 65_536)
        #expect(answers.count == 3, "all fit")
        answers = (0..<9).map { _ in answer(65_536) }
        let frame = SPFWorkerConnection.fitted(&answers, { .answers(id: 1, $0) })
        #expect(answers.count == 1 && frame != nil && frame!.count - 4 <= SPFWire.maxToWorker)
        answers = [answer(SPFWire.maxToWorker)]
        #expect(SPFWorkerConnection.fitted(&answers, { .answers(id: 1, $0) }) == nil)
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
