// The RFC 7208 grammar check and macro expansion Backstop does in front of libspf2:
// the RFC's own macro examples (§7.4), and common real-world records that must stay valid.

import Testing
@testable import BackstopCore

@Suite struct SPFRecordTests {
    @Test func macroExamplesOfTheRFC() {
        let context = SPFMacroContext(sender: "strong-bad@email.example.com", domain: "email.example.com",
                                      client: IPAddress("192.0.2.3")!, helo: "mx.example.org", receiver: "mx.test")
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
            #expect(context.expand(macro, explanation: false) == expected, "\(macro)")
        }
        var v6 = context
        v6.client = IPAddress("2001:db8::cb01")!
        #expect(v6.expand("%{ir}.%{v}._spf.%{d2}", explanation: false)
                == "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
        // c, r, t only in explanations.
        #expect(context.expand("%{c} via %{r}", explanation: true) == "192.0.2.3 via mx.test")
        #expect(context.expand("%{c}.example", explanation: false) == nil)
        // Expanded names are cut from the left to 253 octets.
        var long = context
        long.sender = "x@" + String(repeating: "abcdefghi.", count: 30) + "example"
        let name = long.expandDomain("%{o}.example.com")!
        #expect(name.utf8.count <= 253 && name.hasSuffix(".example.com") && !name.hasPrefix("."))
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
            let parsed = SPFRecord.parse(Array(record.utf8))
            if case .failure(let error) = parsed { Issue.record("\(record): \(error)") }
        }
        let broken = ["v=spf1 ip4: 192.0.2.1", "v=spf1 ip4:192.0.2.1/024", "v=spf1 ip4:192.0.2", "v=spf1 include",
                      "v=spf1 all:x", "v=spf1 mx:example.com/33", "v=spf1 exists:%{z}.example.com", "v=spf1 a:%",
                      "v=spf1 ~exp=x.example", "v=spf1 \u{80}all"]
        for record in broken {
            if case .success = SPFRecord.parse(Array(record.utf8)) { Issue.record("accepted: \(record)") }
        }
        #expect(SPFRecord.isSPF1(Array("v=spf1".utf8)) && SPFRecord.isSPF1(Array("V=SPF1 -all".utf8)))
        #expect(!SPFRecord.isSPF1(Array("v=spf10 -all".utf8)) && !SPFRecord.isSPF1(Array("v=spf1\t-all".utf8)))
    }

    @Test func recordGrammar() {
        func verdict(_ record: String) -> String {
            switch SPFRecord.parse(Array(record.utf8)) {
            case .success: return "ok"
            case .failure: return "permerror"
            }
        }
        #expect(verdict("v=spf1 a/0 mx//0 ip4:0.0.0.0/0 -all") == "ok")
        #expect(verdict("v=spf1 a:1.2.3.4 -all") == "permerror")          // not a domain: no valid top label
        #expect(verdict("v=spf1 foo.bar-baz_x=value -all") == "ok")       // modifier names with . - _
        #expect(verdict("v=spf1 -redirect=x.example") == "permerror")
        #expect(verdict("v=spf1 redirect=a.example redirect=b.example") == "permerror")
        #expect(verdict("v=spf1 ip4:192.0.2.1/33") == "permerror")
        #expect(verdict("v=spf1 exists:%{x}.example") == "permerror")
        #expect(verdict("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d}") == "ok")
        let record = try! SPFRecord.parse(Array("v=spf1 ip4:192.0.2.0/0 a/24//0 x.y=z -all redirect=r.example".utf8)).get()
        let v4 = record.libspf2Text(client: IPAddress("192.0.2.1")!) { spec, use in "\(spec ?? "D")\(use == .anyAddress ? "*" : "")" }
        #expect(v4 == "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 a:D/24 -all")
        let v6 = record.libspf2Text(client: IPAddress("2001:db8::1")!) { spec, use in "\(spec ?? "D")\(use == .anyAddress ? "*" : "")" }
        #expect(v6 == "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 a:D* -all")
    }
}
