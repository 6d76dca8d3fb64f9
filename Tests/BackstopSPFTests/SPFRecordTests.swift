// The RFC 7208 grammar and macro expansion Backstop applies before libspf2 sees a record:
// the RFC's own macro examples (§7.4), common real-world records that must stay valid,
// broken ones that must not, §7.3 truncation, and macro bombs that must stay cheap.

import BackstopCore
import Glibc
import Testing
@testable import BackstopSPF

func expand(_ context: SPFMacroContext, _ spec: String) -> String? {
    context.expandDomain(Array(spec.utf8)[...]).map { String(decoding: $0, as: UTF8.self) }
}

func explain(_ context: SPFMacroContext, _ text: String) -> String? {
    context.expandExplanation(Array(text.utf8)[...]).map { String(decoding: $0, as: UTF8.self) }
}

/// CPU time of the calling thread.
func threadCPUNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

@Suite struct SPFRecordTests {
    let context = SPFMacroContext(sender: Array("strong-bad@email.example.com".utf8), domain: Array("email.example.com".utf8),
                                  client: IPAddress("192.0.2.3")!, helo: Array("mx.example.org".utf8), receiver: Array("mx.test".utf8))

    @Test func macroExamplesOfTheRFC() {
        let examples: [(String, String)] = [
            ("%{s}", "strong-bad@email.example.com"), ("%{o}", "email.example.com"), ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"), ("%{d3}", "email.example.com"), ("%{d2}", "example.com"),
            ("%{d1}", "com"), ("%{dr}", "com.example.email"), ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"), ("%{l-}", "strong.bad"), ("%{lr}", "strong-bad"), ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
            ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
            ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
            ("%%%_%-", "% %20"),
            ("%{S}", "strong-bad%40email.example.com"),
        ]
        for (macro, expected) in examples {
            #expect(expand(context, macro) == expected, "\(macro)")
        }
        var v6 = context
        v6.client = IPAddress("2001:db8::cb01")!
        #expect(expand(v6, "%{ir}.%{v}._spf.%{d2}")
                == "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
        // c, r, t only in explanations.
        #expect(explain(context, "%{c} via %{r}") == "192.0.2.3 via mx.test")
        #expect(SPFMacro.check(Array("%{c}.example".utf8)[...], explanation: false) != nil)
    }

    @Test func expandedNamesAreCutFromTheLeftAtLabels() {
        var long = context
        long.sender = Array(("x@" + String(repeating: "abcdefghi.", count: 30) + "example").utf8)
        let name = expand(long, "%{o}.example.com")!
        #expect(name.utf8.count <= 253 && name.hasSuffix(".example.com") && !name.hasPrefix("."))
        #expect(name.hasPrefix("abcdefghi."))  // whole labels only
        // Exactly 253 stays; a final dot is not counted.
        let exact = String(repeating: "a", count: 61) + "." + String(repeating: "b", count: 61) + "." +
            String(repeating: "c", count: 61) + "." + String(repeating: "d", count: 61) + ".com"
        #expect(exact.utf8.count == 251)
        #expect(expand(context, exact + ".") == exact)
    }

    /// RFC 7208 §7.3 applied to a bomb: `a:%{d}` ×1,500 for a 250-octet domain must give the
    /// last whole labels within 253 octets, in well under 50 ms of CPU.
    @Test func macroBombsCostTheirLengthNotTheirExpansion() {
        let label = String(repeating: "q", count: 61)
        let domain = [label, label, label, String(repeating: "r", count: 57), "example"].joined(separator: ".")
        #expect(domain.utf8.count >= 250)
        var bomb = context
        bomb.domain = Array(domain.utf8)
        let spec = String(repeating: "%{d}", count: 1_500)
        let started = threadCPUNanoseconds()
        let name = expand(bomb, spec)!
        let cpu = threadCPUNanoseconds() - started
        // The expansion ends with the domain's last labels, glued to the one before it.
        #expect(name.utf8.count <= 253 && name.hasSuffix(".example"))
        #expect(cpu < 50_000_000, "expansion took \(cpu / 1_000_000) ms of CPU")
        // exists: of many %{l}. labels with a long local part.
        var local = context
        local.sender = Array((String(repeating: "l", count: 60) + "@example.com").utf8)
        let many = String(repeating: "%{l}.", count: 15_000) + "x.example"
        let started2 = threadCPUNanoseconds()
        let name2 = expand(local, many)!
        let cpu2 = threadCPUNanoseconds() - started2
        #expect(name2.utf8.count <= 253 && name2.hasSuffix(".x.example"))
        #expect(cpu2 < 50_000_000, "expansion took \(cpu2 / 1_000_000) ms of CPU")
        // A whole record of them (62 KB) is a record the grammar accepts.
        let record = "v=spf1 " + String(repeating: "a:%{d}%{d}%{d}%{d}.x.test ", count: 2_400) + "-all"
        if case .failure(let error) = SPFRecord.parse(Array(record.utf8)) { Issue.record("\(error)") }
        // An explanation stops at its cap.
        let text = String(repeating: "%{s} ", count: 200)
        #expect(explain(context, text)!.utf8.count == SPFMacro.maxExplanation)
    }

    @Test func realWorldRecordsStayValid() {
        let records = [
            "v=spf1 include:_spf.google.com ~all",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 mx a:mail.example.com -all",
            "v=spf1 exists:%{i}._spf.example.com -all",
            "v=spf1 redirect=_spf.example.com",
            "V=SPF1 IP4:192.0.2.1 MX:Example.COM -ALL",
            "v=spf1 a:mail.example.com. ptr:example.com ?all   ",
            "v=spf1 ip4:192.0.2.1 ~all exp=explain._spf.%{d}",
            "v=spf1 a/24 mx/24//64 ip6:::ffff:192.0.2.0/120 -all",
            "v=spf1",
        ]
        for record in records {
            if case .failure(let error) = SPFRecord.parse(Array(record.utf8)) { Issue.record("\(record): \(error)") }
        }
        let broken = ["v=spf1 ip4: 192.0.2.1", "v=spf1 ip4:192.0.2.1/024", "v=spf1 ip4:192.0.2", "v=spf1 include",
                      "v=spf1 all:x", "v=spf1 mx:example.com/33", "v=spf1 exists:%{z}.example.com", "v=spf1 a:%",
                      "v=spf1 ~exp=x.example", "v=spf1 \u{80}all", "v=spf1 a:1.2.3.4 -all", "v=spf1 -redirect=x.example",
                      "v=spf1 redirect=a.example redirect=b.example", "v=spf1 exists:%{x}.example", "v=spf1 a:%{c}.example"]
        for record in broken {
            if case .success = SPFRecord.parse(Array(record.utf8)) { Issue.record("accepted: \(record)") }
        }
        for record in ["v=spf1 a/0 mx//0 ip4:0.0.0.0/0 -all", "v=spf1 foo.bar-baz_x=value -all", "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d}"] {
            if case .failure(let error) = SPFRecord.parse(Array(record.utf8)) { Issue.record("\(record): \(error)") }
        }
        #expect(SPFRecord.isSPF1(Array("v=spf1".utf8)) && SPFRecord.isSPF1(Array("V=SPF1 -all".utf8)))
        #expect(!SPFRecord.isSPF1(Array("v=spf10 -all".utf8)) && !SPFRecord.isSPF1(Array("v=spf1\t-all".utf8)))
    }

    @Test func aRecordKnowsItsMacrosAndTheNamesItNeeds() throws {
        let record = try SPFRecord.parse(Array("v=spf1 a mx:mail.example.org include:_spf.example.net exists:%{l}.x.example ptr redirect=r.example exp=%{d}.why".utf8)).get()
        #expect(record.macros.contains(.localPart) && record.macros.contains(.domain) && !record.macros.contains(.helo))
        let related = SPFAnswer.related(record, owner: DNSName(text: "example.org")!)
        let names = related.map { ($0.name?.description ?? "-") + ":\($0.kind)" }
        #expect(names == ["example.org:address", "mail.example.org:mx", "_spf.example.net:txt", "-:ptr", "r.example:txt"])
        // Problems quote little of a hostile record.
        let long = "v=spf1 bogus:" + String(repeating: "z", count: 10_000)
        guard case .failure(let error) = SPFRecord.parse(Array(long.utf8)) else { Issue.record("accepted"); return }
        #expect(error.description.utf8.count < 120)
    }
}
