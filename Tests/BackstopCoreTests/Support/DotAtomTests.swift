// DotAtom.check against RFC 5322 §3.2.3 written out plainly: atoms of atext joined by single
// dots, with 8-bit octets as atext only for SMTPUTF8 (`utf8`).

import Testing
@testable import BackstopCore

struct DotAtomTests {
    static let atext = Set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-/=?^_`{|}~".utf8)

    /// The grammar itself: split on dots, every atom non-empty and made of atext.
    static func reference(_ octets: [UInt8], utf8: Bool) -> Bool {
        let atoms = octets.split(separator: 0x2E, omittingEmptySubsequences: false)
        return !octets.isEmpty && atoms.allSatisfy { atom in
            !atom.isEmpty && atom.allSatisfy { atext.contains($0) || (utf8 && $0 >= 0x80) }
        }
    }

    @Test func everyShortTextIsJudgedAsTheGrammarSays() {
        // Every octet alone, between letters, and beside dots: all the rule's branches.
        var samples: [[UInt8]] = [[], [0x2E], [0x2E, 0x2E], Array("a..b".utf8), Array(".a".utf8), Array("a.".utf8),
                                  Array("mail.example.org".utf8), Array("198.51.100.7".utf8), Array("2001:db8::1".utf8)]
        for octet in UInt8.min...UInt8.max {
            samples.append([octet])
            samples.append([0x61, octet, 0x62])
            samples.append([0x61, 0x2E, octet])
            samples.append([octet, 0x2E, 0x61, 0x2E, octet])
        }
        for sample in samples {
            for utf8 in [false, true] {
                #expect(sample.withUnsafeBytes { DotAtom.check($0, utf8: utf8) } == Self.reference(sample, utf8: utf8),
                        "\(sample) utf8=\(utf8)")
            }
        }
    }
}
