// BATV tags: known answers computed independently with Python's hmac module
// (hmac.new(key, ("KDDD" + address).lower().encode(), hashlib.sha1).hexdigest()[:6]), both
// tag orders, case, the day arithmetic across the mod-1000 wrap, and dates.

import Testing
@testable import BackstopCore

private let one = BATVKey(number: 1, secret: Array("0123456789abcdef-secret-one".utf8))
private let two = BATVKey(number: 2, secret: Array("second-secret-key-for-rotation".utf8))
private let seven = BATVKey(number: 7, secret: Array("an entirely different key 0042".utf8))

@Suite struct BATVTagTests {
    @Test func signaturesMatchPythonsHMAC() {
        #expect(BATVTag.signature(of: "alice@example.org", key: one, expiryDay: 123) == "964c87")
        #expect(BATVTag.signature(of: "Bob.Smith@Example.ORG", key: two, expiryDay: 5) == "b6e55e")
        #expect(BATVTag.signature(of: "list-owner@lists.example.org", key: seven, expiryDay: 999) == "b0b5a2")
    }

    /// A domain in U-labels and its A-label form are one domain: a tag made for either
    /// verifies for the other (an MTA without SMTPUTF8 converts the domain of the bounce
    /// address on the way back). The HMAC is over the A-label form.
    @Test func aTagVerifiesForEitherFormOfAnIDNDomain() throws {
        let unicode = try #require(BATVTag.sign("alice@bücher.example", key: one, today: 20785, lifetimeDays: 7))
        let ascii = unicode.replacingOccurrences(of: "bücher.example", with: "xn--bcher-kva.example")
        #expect(ascii != unicode)
        #expect(BATVTag.verify(ascii, keys: [one], today: 20785) == .valid(keyNumber: 1, daysLeft: 7))
        #expect(BATVTag.verify(unicode, keys: [one], today: 20785) == .valid(keyNumber: 1, daysLeft: 7))
        let fromASCII = try #require(BATVTag.sign("alice@xn--bcher-kva.example", key: one, today: 20785, lifetimeDays: 7))
        #expect(fromASCII == ascii, "one signature for both forms")
        #expect(BATVTag.signature(of: "alice@xn--bcher-kva.example", key: one, expiryDay: 792)
                    == BATVTag.signature(of: "alice@BÜCHER.example", key: one, expiryDay: 792))
    }

    @Test func aSignedAddressCarriesKeyDayAndSignature() {
        // Day 20785 is 2026-11-28; + 7 = 20792, mod 1000 = 792.
        #expect(BATVTag.sign("alice@example.org", key: one, today: 20785, lifetimeDays: 7)
                == "prvs=1792e3e082=alice@example.org", "Python: hmac(key, b\"1792alice@example.org\")")
        #expect(BATVTag.sign("alice@example.org", key: one, today: 116, lifetimeDays: 7)
                == "prvs=1123964c87=alice@example.org", "the Python vector, signed on day 116")
    }

    @Test func tooLongALocalPartIsNotSigned() {
        let local48 = String(repeating: "a", count: 48)
        #expect(BATVTag.sign(local48 + "@example.org", key: one, today: 0, lifetimeDays: 7) != nil, "48 + 16 = 64 octets")
        #expect(BATVTag.sign(local48 + "a@example.org", key: one, today: 0, lifetimeDays: 7) == nil)
        #expect(BATVTag.sign("no-at-sign", key: one, today: 0, lifetimeDays: 7) == nil)
        #expect(BATVTag.sign("\"john doe\"@example.org", key: one, today: 0, lifetimeDays: 7) == nil, "quoted local parts")
        // One rule for what is signed and what a bounce may come back to untagged.
        for address in ["\"john doe\"@example.org", "john doe@example.org", ".a@example.org", "a.@example.org", "a..b@example.org",
                        "a\"b@example.org", "(c)a@example.org", "@example.org", "noat", local48 + "a@example.org"] {
            #expect(!BATVTag.signable(address), "\(address)")
        }
        for address in ["a.b+c-d_e@example.org", "o'brien@example.org", "!#$%&'*+/=?^_`{|}~@example.org", "jürgen@example.org", local48 + "@example.org"] {
            #expect(BATVTag.signable(address) && BATVTag.sign(address, key: one, today: 0, lifetimeDays: 7) != nil, "\(address)")
        }
    }

    @Test func bothOrdersAndAnyCaseAreRead() throws {
        let draft = try #require(BATVTag.parse("prvs=1123964c87=alice@example.org"))
        #expect(draft == BATVTaggedAddress(keyNumber: 1, expiryDay: 123, signature: "964c87", address: "alice@example.org"))
        #expect(BATVTag.parse("PRVS=1123964C87=alice@example.org") == draft)
        #expect(BATVTag.parse("prvs=alice=1123964c87@example.org") == draft, "the reversed order")
        #expect(BATVTag.parse("alice@example.org") == nil)
        #expect(BATVTag.parse("prvs=1123964c8=alice@example.org") == nil, "nine characters")
        #expect(BATVTag.parse("prvs=1123964g87=alice@example.org") == nil, "not hex")
        #expect(BATVTag.parse("prvs=1123964c87=@example.org") == nil, "no local part left")
        #expect(BATVTag.parse("prvs=@ice=1123964C87@example.org") == nil, "an @ left in the local part (found by the fuzzer)")
        #expect(BATVTag.parse("prvs=1123964c87=a@b@example.org") == nil, "an @ left in the local part")
        // An "@" followed by a combining mark is one Character but still the octet that splits.
        #expect(BATVTag.parse("prvs=1123964c87=a@\u{301}b.org")?.address == "a@\u{301}b.org", "found by the fuzzer")
        #expect(BATVTag.looksTagged("Prvs=broken@example.org"))
        #expect(!BATVTag.looksTagged("prv@example.org"))
    }

    @Test func verificationNamesWhatIsWrong() {
        let keys = [one, two]
        #expect(BATVTag.verify("prvs=1123964c87=alice@example.org", keys: keys, today: 116)
                == .valid(keyNumber: 1, daysLeft: 7))
        #expect(BATVTag.verify("prvs=1123964C87=Alice@Example.org", keys: keys, today: 120)
                == .valid(keyNumber: 1, daysLeft: 3), "case of hex and address does not matter")
        #expect(BATVTag.verify("prvs=1123964c87=alice@example.org", keys: keys, today: 123)
                == .valid(keyNumber: 1, daysLeft: 0), "valid through its expiry day")
        #expect(BATVTag.verify("prvs=1123964c87=alice@example.org", keys: keys, today: 124) == .expired)
        #expect(BATVTag.verify("prvs=1123964c87=alice@example.org", keys: keys, today: 93) == .valid(keyNumber: 1, daysLeft: 30),
                "made before lifetime was shortened: up to 30 days ahead are ours")
        #expect(BATVTag.verify("prvs=1123964c87=alice@example.org", keys: keys, today: 92) == .valid(keyNumber: 1, daysLeft: 31),
                "lifetime = 30d, made just after midnight by a host whose clock is ahead: a day more")
        #expect(BATVTag.verify("prvs=1123964c87=alice@example.org", keys: keys, today: 91) == .expired,
                "an expiry further ahead than the longest lifetime and a day is not ours")
        #expect(BATVTag.verify("prvs=1123964c88=alice@example.org", keys: keys, today: 116) == .badSignature)
        #expect(BATVTag.verify("prvs=1123964c87=mallory@example.org", keys: keys, today: 116) == .badSignature)
        #expect(BATVTag.verify("prvs=3123964c87=alice@example.org", keys: keys, today: 116) == .unknownKey)
        #expect(BATVTag.verify("alice@example.org", keys: keys, today: 116) == .noTag)
    }

    @Test func theDayWrapsAtOneThousand() throws {
        // Signed on day 20998 (expiry 21005 → "005"), checked on days 20999 and 21005, 21006.
        let tagged = try #require(BATVTag.sign("bob@example.org", key: two, today: 20998, lifetimeDays: 7))
        #expect(tagged.hasPrefix("prvs=2005"))
        #expect(BATVTag.verify(tagged, keys: [two], today: 20999) == .valid(keyNumber: 2, daysLeft: 6))
        #expect(BATVTag.verify(tagged, keys: [two], today: 21005) == .valid(keyNumber: 2, daysLeft: 0))
        #expect(BATVTag.verify(tagged, keys: [two], today: 21006) == .expired)
    }

    @Test func datesAreDaysSinceTheEpoch() {
        // Python: (date.fromisoformat(d) - date(1970, 1, 1)).days
        #expect(BATVSettings.day(parsing: "1970-01-01") == 0)
        #expect(BATVSettings.day(parsing: "2000-02-29") == 11016)
        #expect(BATVSettings.day(parsing: "2026-11-28") == 20785)
        #expect(BATVSettings.day(parsing: "9999-12-31") == 2_932_896)
        #expect(BATVSettings.day(parsing: "2026-02-29") == nil)
        #expect(BATVSettings.day(parsing: "2026-1-5") == nil)
        #expect(BATVSettings.day(parsing: "yesterday") == nil)
        #expect(BATVSettings.day(parsing: "2026-+1-05") == nil)
        #expect(BATVTag.day(unixSeconds: 1_795_824_000) == 20785)  // 2026-11-28T00:00:00Z
        #expect(BATVTag.day(unixSeconds: 1_795_910_399) == 20785)  // 23:59:59 the same day
    }
}
