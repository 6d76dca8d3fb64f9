// Normalisation as Postfix does it before a lookup, one rule per test, plus the rule
// that recipients outside our domains get no opinion.

import Foundation
import Testing
@testable import BackstopCore

@Suite struct RecipientsNormalisationTests {
    let dir: RecipientTableDirectory
    let file: String
    let table: RecipientTable

    init() throws {
        dir = try RecipientTableDirectory()
        table = try dir.table("""
            alice@example.com            OK
            bob@example.com              OK
            bob+lists@example.com        OK
            owner-list@example.com       OK
            list-request@example.com     OK
            postmaster@example.com       OK
            "john doe"@example.com       OK
            "odd\\"quote"@example.com    OK
            jörg@example.com             OK
            Ünal@bücher.example          OK
            info@xn--mnchen-3ya.example  OK
            @catchall.example            OK
            """)
        file = dir.file("recipients")
    }

    @Test func domainIsCaseInsensitiveAndTrailingDotIgnored() {
        #expect(table.lookup("alice@EXAMPLE.com") == .valid(file: file, line: 1))
        #expect(table.lookup("alice@example.com.") == .valid(file: file, line: 1))
        #expect(table.lookup("alice@Example.COM.") == .valid(file: file, line: 1))
        #expect(table.lookup("<alice@example.com>") == .valid(file: file, line: 1))
    }

    @Test func localPartIsCaseInsensitiveByDefault() {
        #expect(table.lookup("ALICE@example.com") == .valid(file: file, line: 1))
        #expect(table.lookup("JÖRG@example.com") == .valid(file: file, line: 9))
    }

    /// Postfix folds case (ICU's full case folding), not only lowers it: `straße` and
    /// `STRASSE` are one mailbox there, and the final sigma is a sigma. Lowering alone left
    /// `ß` and `ς` as they were, and such a recipient got 550.
    @Test func localPartsAreCaseFoldedAsPostfixDoes() throws {
        let folded = try dir.table("strasse@example.de OK\nΟΔΥΣΣΕΥΣ@example.gr OK\nﬁle@example.com OK\n", name: "folded")
        let path = dir.file("folded")
        for address in ["straße@example.de", "STRASSE@example.de", "Straẞe@example.de"] {
            #expect(folded.lookup(address) == .valid(file: path, line: 1), "\(address)")
        }
        #expect(folded.lookup("οδυσσευς@example.gr") == .valid(file: path, line: 2))
        #expect(folded.lookup("file@example.com") == .valid(file: path, line: 3))
        #expect(folded.lookup("strase@example.de") == .unknown)
    }

    @Test func caseSensitiveLocalPartWhenConfigured() throws {
        let dir = try RecipientTableDirectory()
        let sensitive = try dir.table("Alice@Example.com OK\n", caseSensitive: true)
        let rules = RecipientNormalisation(caseSensitiveLocalPart: true)
        #expect(sensitive.lookup("Alice@example.COM", rules: rules) == .valid(file: dir.file("recipients"), line: 1))
        #expect(sensitive.lookup("alice@example.com", rules: rules) == .unknown)
        #expect(sensitive.lookup("ALICE@example.com", rules: rules) == .unknown)
    }

    @Test func extensionsAreStrippedAfterTryingTheFullAddress() {
        let plus = RecipientNormalisation(recipientDelimiter: "+")
        #expect(table.lookup("alice+news@example.com", rules: plus) == .valid(file: file, line: 1))
        #expect(table.lookup("bob+lists@example.com", rules: plus) == .valid(file: file, line: 3))  // full address first
        #expect(table.lookup("bob+other@example.com", rules: plus) == .valid(file: file, line: 2))
        #expect(table.lookup("carol+x@example.com", rules: plus) == .unknown)
        // Without a delimiter nothing is stripped.
        #expect(table.lookup("alice+news@example.com") == .unknown)
        // A delimiter not in the set does not split.
        #expect(table.lookup("alice-news@example.com", rules: plus) == .unknown)
        // An empty local part before the delimiter is not a split.
        #expect(table.lookup("+alice@example.com", rules: plus) == .unknown)
    }

    @Test func severalDelimitersSplitAtTheFirstOfAny() {
        let both = RecipientNormalisation(recipientDelimiter: "+-")
        #expect(table.lookup("alice-news@example.com", rules: both) == .valid(file: file, line: 1))
        #expect(table.lookup("alice+news-x@example.com", rules: both) == .valid(file: file, line: 1))
        #expect(table.lookup("alice-news+x@example.com", rules: both) == .valid(file: file, line: 1))
    }

    @Test func postfixNeverSplitsTheseAddresses() {
        let dash = RecipientNormalisation(recipientDelimiter: "-")
        // owner-foo and foo-request stay whole when "-" is a delimiter (split_addr).
        #expect(table.lookup("owner-list@example.com", rules: dash) == .valid(file: file, line: 4))
        #expect(table.lookup("owner-other@example.com", rules: dash) == .unknown)
        #expect(table.lookup("other-request@example.com", rules: dash) == .unknown)
        #expect(table.lookup("alice-x@example.com", rules: dash) == .valid(file: file, line: 1))
        let plus = RecipientNormalisation(recipientDelimiter: "+")
        #expect(table.lookup("postmaster@example.com", rules: plus) == .valid(file: file, line: 6))
    }

    @Test func batvTagsAreStripped() {
        let rules = RecipientNormalisation()
        // draft-levine-smtp-batv: prvs=KDDDSSSSSS=user
        #expect(table.lookup("prvs=1234abcdef=alice@example.com", rules: rules) == .valid(file: file, line: 1))
        #expect(table.lookup("PRVS=0021A1B2C3=Alice@example.com", rules: rules) == .valid(file: file, line: 1))
        // the older prvs=user=KDDDSSSSSS form
        #expect(table.lookup("prvs=alice=1234abcdef@example.com", rules: rules) == .valid(file: file, line: 1))
        // not a tag: wrong length, not hex, or no user
        #expect(table.lookup("prvs=123abcdef=alice@example.com", rules: rules) == .unknown)
        #expect(table.lookup("prvs=1234abcdeg=alice@example.com", rules: rules) == .unknown)
        #expect(table.lookup("prvs=abcd123456=alice@example.com", rules: rules) == .unknown)
        #expect(table.lookup("prvs=1234abcdef=@example.com", rules: rules) == .unknown)
        // a tag and an extension together
        let plus = RecipientNormalisation(recipientDelimiter: "+")
        #expect(table.lookup("prvs=1234abcdef=alice+x@example.com", rules: plus) == .valid(file: file, line: 1))
        // switched off
        let off = RecipientNormalisation(stripBATV: false)
        #expect(table.lookup("prvs=1234abcdef=alice@example.com", rules: off) == .unknown)
    }

    @Test func angleBracketsComeOffOnce() {
        #expect(table.lookup("<alice@example.com>") == .valid(file: file, line: 1))
        #expect(table.lookup("<jörg@example.com>") == .valid(file: file, line: 9))
        // Twice bracketed is no address Postfix sends: neither path takes off two pairs.
        #expect(table.lookup("<<alice@example.com>>") != .valid(file: file, line: 1))
        #expect(table.lookup("<<jörg@example.com>>") != .valid(file: file, line: 9))
    }

    @Test func quotedLocalParts() {
        #expect(table.lookup("\"john doe\"@example.com") == .valid(file: file, line: 7))
        #expect(table.lookup("john doe@example.com") == .valid(file: file, line: 7))  // Postfix's internal form
        #expect(table.lookup("\"John Doe\"@example.com") == .valid(file: file, line: 7))
        #expect(table.lookup("odd\"quote@example.com") == .valid(file: file, line: 8))
        #expect(table.lookup("\"odd\\\"quote\"@example.com") == .valid(file: file, line: 8))
        #expect(table.lookup("\"a@b\"@example.com") == .unknown)  // the last @ separates the domain
    }

    @Test func smtputf8Addresses() {
        #expect(table.lookup("jörg@example.com") == .valid(file: file, line: 9))
        // NFD (o + combining diaeresis) is the same address as NFC.
        #expect(table.lookup("jo\u{0308}rg@example.com") == .valid(file: file, line: 9))
        #expect(table.lookup("ünal@bücher.example") == .valid(file: file, line: 10))
        #expect(table.lookup("jorg@example.com") == .unknown)
        // Invalid UTF-8 from a client never matches and never crashes.
        let bytes: [UInt8] = Array("j".utf8) + [0xF6] + Array("rg@example.com".utf8)
        let match = bytes.withUnsafeBytes { table.match($0, rules: RecipientNormalisation()) }
        #expect(match == .notOurDomain)
        // The last "@" octet separates the domain, even when a combining mark follows it and
        // makes it part of one Character (the mistake the socketmap fuzzer's harness made).
        let split = Array("ü@x@\u{301}example.com".utf8).withUnsafeBytes {
            AddressNormaliser.prepareUnicode($0, rules: RecipientNormalisation())
        }
        guard case .failure(.badDomain(let domain)) = split else {
            Issue.record("split as \(split)")
            return
        }
        #expect(domain == LogEscaping.escape("\u{301}example.com"))
    }

    @Test func aLabelsAndULabelsAreTheSameDomain() {
        #expect(table.lookup("ünal@xn--bcher-kva.example") == .valid(file: file, line: 10))
        #expect(table.lookup("ÜNAL@XN--BCHER-KVA.EXAMPLE.") == .valid(file: file, line: 10))
        #expect(table.lookup("ÜNAL@BÜCHER.example") == .valid(file: file, line: 10))
        #expect(table.lookup("info@münchen.example") == .valid(file: file, line: 11))
        #expect(table.lookup("info@MÜNCHEN.example") == .valid(file: file, line: 11))
        #expect(table.lookup("info@münchen。example") == .valid(file: file, line: 11))  // ideographic full stop
        #expect(table.lookup("nobody@münchen.example") == .unknown)
        // A label may not begin with a combining mark (RFC 5891 §4.2.3.2): no domain at all.
        #expect(DomainName.asciiForm("\u{301}münchen.example") == nil)
        #expect(DomainName.asciiForm("mu\u{308}nchen.example") == "xn--mnchen-3ya.example", "a mark inside a label is NFC'd")
    }

    @Test func punycodeMatchesRFC3492() {
        let samples = [
            ("bücher", "bcher-kva"), ("münchen", "mnchen-3ya"), ("ñ", "ida"),
            ("ليهمابتكلموشعربي؟", "egbpdaj6bu4bxfgehfvwxn"),
            ("他们为什么不说中文", "ihqwcrb4cv8a8dqg056pqjye"),
            ("Pročprostěnemluvíčesky", "Proprostnemluvesky-uyb24dma41a"),
            ("3年B組金八先生", "3B-ww4c5e180e575a65lsy2b"),
            ("安室奈美恵-with-SUPER-MONKEYS", "-with-SUPER-MONKEYS-pc58ag80a8qai00g7n9n"),
        ]
        for (unicode, ascii) in samples {
            #expect(Punycode.encode(unicode) == ascii)
            #expect(Punycode.decode(ascii) == unicode)
        }
        #expect(Punycode.decode("abc-!!") == nil)
        #expect(DomainName.asciiForm("Bücher.Example.") == "xn--bcher-kva.example")
        #expect(DomainName.unicodeForm("xn--bcher-kva.example") == "bücher.example")
    }

    /// Punycode costs a pass per code point: a label longer than any A-label (an attacker's
    /// 1,300 distinct scalars in one RCPT cost ~4M steps on the event loop) is refused unread.
    @Test func labelsLongerThanAnALabelAreRefusedBeforeEncoding() {
        let long = String(String.UnicodeScalarView((0..<1_300).map { Unicode.Scalar(0x4E00 + UInt32($0))! }))
        #expect(DomainName.asciiForm(long + ".example") == nil)
        let most = String(String.UnicodeScalarView((0..<DomainName.maxLabel).map { _ in Unicode.Scalar(0xFC)! }))
        #expect(DomainName.asciiForm(most + ".example") != nil, "63 code points are read (the result may still be too long)")
        let tooMany = String(String.UnicodeScalarView((0...DomainName.maxLabel).map { _ in Unicode.Scalar(0xFC)! }))
        #expect(DomainName.asciiForm(tooMany + ".example") == nil)
        // Decomposed (NFD) text counts after composing: 34 code points, 68 scalars, converted.
        let nfd = String(repeating: "o\u{308}a\u{308}u\u{308}", count: 11) + "o\u{308}"
        #expect(nfd.unicodeScalars.count == 68)
        #expect(DomainName.asciiForm(nfd + ".example") == DomainName.asciiForm(nfd.precomposedStringWithCanonicalMapping + ".example"))
        #expect(DomainName.asciiForm(nfd + ".example") != nil)
        let longALabel = "xn--" + String(repeating: "a", count: 2_000) + "-kva.example"
        #expect(DomainName.unicodeForm(longALabel) == longALabel, "kept as written, not decoded")
        #expect(DomainName.asciiForm(String(repeating: "a", count: 300) + ".example") != nil, "ASCII labels are only lowercased")
    }

    @Test func catchAllAndNotOurDomain() {
        #expect(table.lookup("anyone@catchall.example") == .valid(file: file, line: 12))
        #expect(table.lookup("ANYONE+x@CatchAll.Example.") == .valid(file: file, line: 12))
        #expect(table.lookup("alice@example.org") == .notOurDomain)
        #expect(table.lookup("alice@sub.example.com") == .notOurDomain)
        #expect(table.lookup("alice") == .notOurDomain)
        #expect(table.lookup("alice@") == .notOurDomain)
        #expect(table.lookup("") == .noAddress)
        #expect(table.lookup("@example.com") == .unknown)
    }

    @Test func configuredDomainsAreOurs() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.table("alice@example.com OK\n", domains: ["Example.NET", "bücher.example"])
        #expect(table.lookup("alice@example.net") == .unknown)
        #expect(table.lookup("x@xn--bcher-kva.example") == .unknown)
        #expect(table.lookup("x@example.org") == .notOurDomain)
        #expect(table.domainCount == 3)
    }
}
