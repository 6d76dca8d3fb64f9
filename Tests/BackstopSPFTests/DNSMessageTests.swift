// The DNS decoder against crafted packets: compression loops and forward pointers, an
// rdlength past the end, a wrong ID or question, a 300-octet name, a label holding a dot,
// 1,600 answers, alias chains and loops. Every packet is written here by hand, octet by octet.

import Testing
@testable import BackstopSPF

/// Builds DNS replies octet by octet.
struct Packet {
    var bytes: [UInt8] = []

    static func header(id: UInt16 = 0x1234, flags: UInt16 = 0x8180, qd: Int = 1, an: Int, ns: Int = 0) -> Packet {
        var p = Packet()
        p.u16(id); p.u16(flags); p.u16(UInt16(qd)); p.u16(UInt16(an)); p.u16(UInt16(ns)); p.u16(0)
        return p
    }

    /// An SOA record for the authority section, owned by `zone`.
    mutating func soa(_ zone: String, ttl: UInt32, minimum: UInt32) {
        name(zone)
        var rdata = wire("ns1." + zone) + wire("hostmaster." + zone)
        for v: UInt32 in [2026112901, 7200, 900, 1209600, minimum] { rdata += [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        u16(6); u16(1); u32(ttl); u16(UInt16(rdata.count)); bytes += rdata  // type SOA, class IN
    }

    mutating func u16(_ v: UInt16) { bytes += [UInt8(v >> 8), UInt8(v & 0xFF)] }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xFFFF)) }
    mutating func name(_ text: String) {
        for label in text.split(separator: ".") { bytes.append(UInt8(label.utf8.count)); bytes += label.utf8 }
        bytes.append(0)
    }
    mutating func question(_ text: String, _ type: DNSType) { name(text); u16(type.rawValue); u16(1) }
    mutating func record(type: DNSType, ttl: UInt32 = 300, rdata: [UInt8]) {
        u16(type.rawValue); u16(1); u32(ttl); u16(UInt16(rdata.count)); bytes += rdata
    }
    /// A record owned by the name at `pointer` (compression).
    mutating func answer(pointer: Int = 12, type: DNSType, ttl: UInt32 = 300, rdata: [UInt8]) {
        bytes += [0xC0 | UInt8(pointer >> 8), UInt8(pointer & 0xFF)]
        record(type: type, ttl: ttl, rdata: rdata)
    }
}

func wire(_ text: String) -> [UInt8] { DNSName(text: text)!.wire }

@Suite struct DNSMessageTests {
    let q = DNSQuestion(DNSName(text: "example.org")!, .a)

    func decode(_ p: Packet, id: UInt16 = 0x1234, question: DNSQuestion? = nil) -> DNSMessage.Decoded {
        DNSMessage.decode(p.bytes, id: id, question: question ?? q)
    }

    @Test func plainAnswerAndTTL() {
        var p = Packet.header(an: 2)
        p.question("example.org", .a)
        p.answer(type: .a, ttl: 300, rdata: [192, 0, 2, 1])
        p.answer(type: .a, ttl: 60, rdata: [192, 0, 2, 2])
        guard case .answer(let a) = decode(p) else { Issue.record("not decoded"); return }
        #expect(a.status == .success && a.addresses == [192, 0, 2, 1, 192, 0, 2, 2] && a.ttl == 60 && a.recordCount == 2)
    }

    @Test func wrongIDOrQuestionIsNotOurs() {
        var p = Packet.header(id: 0x4321, an: 1)
        p.question("example.org", .a)
        p.answer(type: .a, rdata: [192, 0, 2, 1])
        guard case .notOurs = decode(p) else { Issue.record("wrong id accepted"); return }
        var other = Packet.header(an: 1)
        other.question("example.net", .a)
        other.answer(type: .a, rdata: [192, 0, 2, 1])
        guard case .notOurs = decode(other) else { Issue.record("wrong question accepted"); return }
        var type = Packet.header(an: 0)
        type.question("example.org", .txt)
        guard case .notOurs = decode(type) else { Issue.record("wrong type accepted"); return }
        var query = Packet.header(flags: 0x0100, an: 0)  // a query, not a response
        query.question("example.org", .a)
        guard case .notOurs = decode(query) else { Issue.record("a query accepted as an answer"); return }
    }

    @Test func caseOfTheQuestionNameDoesNotMatter() {
        var p = Packet.header(an: 1)
        p.question("ExAmPlE.oRg", .a)
        p.answer(type: .a, rdata: [192, 0, 2, 1])
        guard case .answer(let a) = decode(p) else { Issue.record("not decoded"); return }
        #expect(a.addresses == [192, 0, 2, 1])
    }

    @Test func compressionLoopsAndForwardPointersAreRefused() {
        // An answer whose owner name points at itself.
        var selfLoop = Packet.header(an: 1)
        selfLoop.question("example.org", .a)
        let at = selfLoop.bytes.count
        selfLoop.answer(pointer: at, type: .a, rdata: [192, 0, 2, 1])
        guard case .answer(let a) = decode(selfLoop) else { Issue.record("not decoded"); return }
        #expect(a.status == .serverFailure)
        // Two pointers pointing at each other (inside the rdata of a PTR).
        var pair = Packet.header(an: 1)
        pair.question("example.org", .ptr)
        let rdataStart = pair.bytes.count + 2 + 10
        pair.answer(type: .ptr, rdata: [0xC0, UInt8(rdataStart + 2), 0xC0, UInt8(rdataStart)])
        guard case .answer(let b) = decode(pair, question: DNSQuestion(DNSName(text: "example.org")!, .ptr)) else { Issue.record("not decoded"); return }
        #expect(b.status == .serverFailure)
        // A pointer forward, past the name it is part of.
        var forward = Packet.header(an: 1)
        forward.question("example.org", .ptr)
        let start = forward.bytes.count + 2 + 10
        forward.answer(type: .ptr, rdata: [0xC0, UInt8(start + 2)] + wire("target.example"))
        guard case .answer(let c) = decode(forward, question: DNSQuestion(DNSName(text: "example.org")!, .ptr)) else { Issue.record("not decoded"); return }
        #expect(c.status == .serverFailure)
    }

    /// A chain of pointers, each two octets back (the data of a record of another type), read
    /// by a PTR target: up to 127 pointers is a name, 128 or more is refused.
    @Test func longPointerChainsAreRefused() {
        func chained(_ count: Int) -> DNSMessage.Decoded {
            var p = Packet.header(an: 2)
            p.question("example.org", .ptr)
            let start = p.bytes.count + 2 + 10
            var chain: [UInt8] = [0xC0, 12]  // the first points at the question's name
            for k in 1..<count { chain += [0xC0 | UInt8((start + 2 * (k - 1)) >> 8), UInt8((start + 2 * (k - 1)) & 0xFF)] }
            p.bytes += [0xC0, 12]; p.u16(10); p.u16(1); p.u32(300); p.u16(UInt16(chain.count)); p.bytes += chain  // type NULL
            let last = start + 2 * (count - 1)
            p.answer(type: .ptr, rdata: [0xC0 | UInt8(last >> 8), UInt8(last & 0xFF)])
            return decode(p, question: DNSQuestion(DNSName(text: "example.org")!, .ptr))
        }
        guard case .answer(let fine) = chained(126) else { Issue.record("not decoded"); return }
        #expect(fine.status == .success && fine.names == [DNSName(text: "example.org")!], "\(fine)")
        guard case .answer(let over) = chained(127) else { Issue.record("not decoded"); return }
        #expect(over.status == .serverFailure, "128 pointers: \(over)")
        guard case .answer(let long) = chained(2_000) else { Issue.record("not decoded"); return }
        #expect(long.status == .serverFailure, "\(long)")
    }

    @Test func lengthsPastTheEndAreRefused() {
        var p = Packet.header(an: 1)
        p.question("example.org", .a)
        p.bytes += [0xC0, 12]
        p.u16(DNSType.a.rawValue); p.u16(1); p.u32(300); p.u16(400)  // rdlength 400, 4 octets follow
        p.bytes += [192, 0, 2, 1]
        guard case .answer(let a) = decode(p) else { Issue.record("not decoded"); return }
        #expect(a.status == .serverFailure)
        // An A record whose rdata is not 4 octets.
        var short = Packet.header(an: 1)
        short.question("example.org", .a)
        short.answer(type: .a, rdata: [192, 0, 2])
        guard case .answer(let b) = decode(short) else { Issue.record("not decoded"); return }
        #expect(b.status == .serverFailure)
        // A message cut in the middle of its header.
        guard case .notOurs = DNSMessage.decode([0x12, 0x34, 0x81], id: 0x1234, question: q) else { Issue.record("short accepted"); return }
    }

    @Test func namesOver255OctetsAreRefused() {
        // 300 octets: five 59-octet labels, as the owner of the answer.
        var p = Packet.header(an: 1)
        p.question("example.org", .a)
        for _ in 0..<5 { p.bytes.append(59); p.bytes += [UInt8](repeating: 0x61, count: 59) }
        p.bytes.append(0)
        p.record(type: .a, rdata: [192, 0, 2, 1])
        guard case .answer(let a) = decode(p) else { Issue.record("not decoded"); return }
        #expect(a.status == .serverFailure)
        // Reaching 300 octets through a pointer to a long name is refused as well.
        var viaPointer = Packet.header(an: 1)
        viaPointer.question("example.org", .ptr)
        let longAt = viaPointer.bytes.count + 2 + 10
        var rdata: [UInt8] = []
        for _ in 0..<4 { rdata.append(60); rdata += [UInt8](repeating: 0x62, count: 60) }
        rdata += [0xC0, 12]
        viaPointer.answer(type: .ptr, rdata: rdata)
        _ = longAt
        guard case .answer(let b) = decode(viaPointer, question: DNSQuestion(DNSName(text: "example.org")!, .ptr)) else { Issue.record("not decoded"); return }
        #expect(b.status == .serverFailure)
        #expect(DNSName(text: String(repeating: "a.", count: 130) + "org") == nil)
        #expect(DNSName(text: String(repeating: "a", count: 64) + ".org") == nil)
    }

    /// The one-pass text reader agrees with splitting at dots and checking the labels, on
    /// names near every bound (empty and 63/64-octet labels, 255/256-octet names, leading,
    /// doubled and trailing dots).
    @Test func textNamesAgreeWithTheirLabels() {
        func bySplitting(_ text: String) -> DNSName? {
            var bytes = Array(text.utf8)
            if bytes.last == UInt8(ascii: ".") { bytes.removeLast() }
            guard !bytes.isEmpty else { return nil }
            return DNSName(labels: bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false))
        }
        var texts = ["", ".", "..", "a", "a.", "a..", ".a", "a.b", "a..b", "example.org.", "ä.example"]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            var text = ""
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                let length = [0, 1, 2, 62, 63, 64, Int.random(in: 0...70, using: &rng)].randomElement(using: &rng)!
                text += String(repeating: "x", count: length) + (Bool.random(using: &rng) ? "." : "")
            }
            texts.append(text)
        }
        // Wire lengths 250…258 exactly (the limit is 255, the final zero included), with and
        // without a trailing dot.
        for wire in 250...258 {
            var labels: [String] = [], left = wire - 1
            while left > 64 { labels.append(String(repeating: "y", count: 63)); left -= 64 }
            labels.append(String(repeating: "z", count: left - 1))
            texts.append(labels.joined(separator: "."))
            texts.append(labels.joined(separator: ".") + ".")
        }
        var accepted = 0
        for text in texts {
            let name = DNSName(text: text)
            #expect(name == bySplitting(text), "\(text.utf8.count) octets: \(text.prefix(80))")
            if name != nil { accepted += 1 }
        }
        #expect(accepted > 1_000 && accepted < texts.count - 1_000, "both outcomes are exercised: \(accepted) of \(texts.count)")
    }

    @Test func namesThatDifferOnlyInCaseHashAlike() {
        // Lengths on both sides of the eight-octet words the hash folds the octets into.
        let texts = ["a", "Example.ORG", "mail-01.Sub.Example.Org", String(repeating: "AbCdEfGh.", count: 20) + "Test"]
        for text in texts {
            let lower = DNSName(text: text.lowercased())!, mixed = DNSName(text: text)!
            #expect(lower == mixed && lower.hashValue == mixed.hashValue, "\(text)")
            #expect(Set([lower, mixed]).count == 1)
        }
        let distinct = Set(["a.example", "b.example", "a.example.org", "example.a"].map { DNSName(text: $0)! })
        #expect(distinct.count == 4)
    }

    @Test func wordFoldingAgreesWithOctetFolding() {
        for b in 0...255 {
            for shift in stride(from: 0, to: 64, by: 8) {
                let word = UInt64(b) << UInt64(shift) | 0x4100_0000_0000_005A & ~(0xFF << UInt64(shift))
                var expected: UInt64 = 0
                for k in stride(from: 0, to: 64, by: 8) { expected |= UInt64(DNSName.fold(UInt8(truncatingIfNeeded: word >> UInt64(k)))) << UInt64(k) }
                #expect(DNSName.fold8(word) == expected, "octet \(b) at bit \(shift)")
            }
        }
    }

    @Test func aLabelHoldingADotIsOneLabel() {
        let dotted = DNSName(labels: [Array("a.b".utf8), Array("example".utf8)])!
        let three = DNSName(text: "a.b.example")!
        #expect(dotted != three)
        #expect(dotted.labelCount == 2 && three.labelCount == 3)
        #expect(dotted.description == "a\\046b.example")
        #expect(!dotted.isPlain)
        // In a reply, the owner "a.b"+"example" does not answer a question for a.b.example.
        var p = Packet.header(an: 1)
        p.question("a.b.example", .a)
        p.bytes += [3, 0x61, 0x2E, 0x62, 7] + Array("example".utf8) + [0]
        p.record(type: .a, rdata: [192, 0, 2, 1])
        guard case .answer(let a) = decode(p, question: DNSQuestion(three, .a)) else { Issue.record("not decoded"); return }
        #expect(a.recordCount == 0)
    }

    @Test func sixteenHundredAnswersAreReadAndBounded() {
        // 1,600 PTR records sharing one compressed 200-octet target: only 11 names are kept.
        var p = Packet.header(an: 1600)
        p.question("1.2.0.192.in-addr.arpa", .ptr)
        let targetAt = p.bytes.count + 2 + 10
        var target: [UInt8] = []
        for _ in 0..<3 { target.append(63); target += [UInt8](repeating: 0x63, count: 63) }
        target += wire("example")
        p.answer(type: .ptr, rdata: target)
        for _ in 1..<1600 { p.answer(type: .ptr, rdata: [0xC0 | UInt8(targetAt >> 8), UInt8(targetAt & 0xFF)]) }
        guard case .answer(let a) = decode(p, question: DNSQuestion(DNSName(text: "1.2.0.192.in-addr.arpa")!, .ptr)) else {
            Issue.record("not decoded"); return
        }
        #expect(a.recordCount == 1600)
        #expect(a.names.count == DNSMessage.maxNamesKept)
        let kept = SPFAnswer(a, question: DNSQuestion(DNSName(text: "1.2.0.192.in-addr.arpa")!, .ptr))
        #expect(kept.cost < 4_000)
    }

    @Test func aliasChainsAreFollowedAndLoopsRefused() {
        var p = Packet.header(an: 3)
        p.question("example.org", .a)
        let first = p.bytes.count
        p.answer(type: .cname, rdata: wire("b.example.org"))
        p.bytes += wire("b.example.org")
        p.record(type: .cname, rdata: wire("c.example.org"))
        p.bytes += wire("c.example.org")
        p.record(type: .a, rdata: [192, 0, 2, 9])
        _ = first
        guard case .answer(let a) = decode(p) else { Issue.record("not decoded"); return }
        #expect(a.addresses == [192, 0, 2, 9] && a.alias == nil)
        // An alias to itself.
        var loop = Packet.header(an: 1)
        loop.question("example.org", .a)
        loop.answer(type: .cname, rdata: wire("example.org"))
        guard case .answer(let b) = decode(loop) else { Issue.record("not decoded"); return }
        #expect(b.status == .serverFailure)
        // An alias the server did not follow: reported for the resolver to ask.
        var open = Packet.header(an: 1)
        open.question("example.org", .a)
        open.answer(type: .cname, rdata: wire("elsewhere.example"))
        guard case .answer(let c) = decode(open) else { Issue.record("not decoded"); return }
        #expect(c.status == .success && c.recordCount == 0 && c.alias == DNSName(text: "elsewhere.example"))
    }

    @Test func rcodesAndTruncation() {
        var nx = Packet.header(flags: 0x8183, an: 0)
        nx.question("example.org", .a)
        guard case .answer(let a) = decode(nx) else { Issue.record("not decoded"); return }
        #expect(a.status == .nameError)
        var fail = Packet.header(flags: 0x8182, qd: 0, an: 0)
        guard case .answer(let b) = decode(fail) else { Issue.record("not decoded"); return }
        #expect(b.status == .serverFailure)
        fail = Packet.header(flags: 0x8380, an: 0)
        fail.question("example.org", .a)
        guard case .truncated = decode(fail) else { Issue.record("TC not seen"); return }
    }

    /// RFC 2308 §5: "no such name" and "no such record" hold for the lesser of the SOA's TTL
    /// and MINIMUM; RFC 2181 §8: a TTL with its high bit set is 0.
    @Test func negativeAnswersTakeTheirTTLFromTheSOA() {
        var nx = Packet.header(flags: 0x8183, an: 0, ns: 1)
        nx.question("example.org", .a)
        nx.soa("example.org", ttl: 300, minimum: 120)
        guard case .answer(let a) = decode(nx) else { Issue.record("not decoded"); return }
        #expect(a.status == .nameError && a.ttl == 120)
        var nodata = Packet.header(an: 0, ns: 1)
        nodata.question("example.org", .a)
        nodata.soa("example.org", ttl: 50, minimum: 3600)
        guard case .answer(let b) = decode(nodata) else { Issue.record("not decoded"); return }
        #expect(b.status == .success && b.recordCount == 0 && b.ttl == 50)
        // An alias whose end has no such record: an answer (the SOA says so), not an alias to ask for.
        var chain = Packet.header(an: 1, ns: 1)
        chain.question("example.org", .a)
        chain.answer(type: .cname, ttl: 30, rdata: wire("target.example"))
        chain.soa("example", ttl: 600, minimum: 600)
        guard case .answer(let c) = decode(chain) else { Issue.record("not decoded"); return }
        #expect(c.recordCount == 0 && c.alias == nil && c.ttl == 30)
        // Without an SOA, as before: TTL 0 (the cache keeps it 1 s).
        var bare = Packet.header(flags: 0x8183, an: 0)
        bare.question("example.org", .a)
        guard case .answer(let d) = decode(bare) else { Issue.record("not decoded"); return }
        #expect(d.status == .nameError && d.ttl == 0)
        var high = Packet.header(an: 1)
        high.question("example.org", .a)
        high.answer(type: .a, ttl: 0x8000_0100, rdata: [192, 0, 2, 1])
        guard case .answer(let e) = decode(high) else { Issue.record("not decoded"); return }
        #expect(e.ttl == 0)
    }

    @Test func txtStringsAreJoinedAndAnSPFRecordIsCheckedOnce() {
        var p = Packet.header(an: 2)
        p.question("example.org", .txt)
        let part1 = Array("v=spf1 ip4:192.0.2.0/24".utf8), part2 = Array(" -all".utf8)
        p.answer(type: .txt, rdata: [UInt8(part1.count)] + part1 + [UInt8(part2.count)] + part2)
        let other = Array("google-site-verification=abc".utf8)
        p.answer(type: .txt, rdata: [UInt8(other.count)] + other)
        let question = DNSQuestion(DNSName(text: "example.org")!, .txt)
        guard case .answer(let a) = decode(p, question: question) else { Issue.record("not decoded"); return }
        #expect(a.texts.count == 2)
        let spf = SPFAnswer(a, question: question)
        guard case .record(let record) = spf.spf else { Issue.record("no record: \(spf.spf)"); return }
        #expect(record.source == part1 + part2 && record.directives.count == 2)
        #expect(spf.explanation == nil)  // two TXT records cannot serve as an explanation
        // A TXT string whose length octet runs past the record.
        var bad = Packet.header(an: 1)
        bad.question("example.org", .txt)
        bad.answer(type: .txt, rdata: [50] + Array("short".utf8))
        guard case .answer(let b) = decode(bad, question: question) else { Issue.record("not decoded"); return }
        #expect(b.status == .serverFailure)
    }

    @Test func aHostile60KBRecordCostsLittleInTheCache() {
        let junk = "v=spf1 " + String(repeating: "x", count: 60_000)
        var answer = DNSAnswer(status: .success, ttl: 300)
        answer.texts = [Array(junk.utf8)]
        answer.recordCount = 1
        let spf = SPFAnswer(answer, question: DNSQuestion(DNSName(text: "hostile.example")!, .txt))
        guard case .invalid(let why) = spf.spf else { Issue.record("accepted"); return }
        #expect(why.utf8.count <= SPFAnswer.maxProblem)
        #expect(spf.cost < 1_000)
    }
}
