// Attribute.lookup, the byte-level name switch the parser runs for every attribute line:
// it must find exactly the names of `wireName` and nothing else.

import Testing
@testable import BackstopCore

@Suite struct AttributeTests {
    static func lookup(_ name: String) -> Attribute? {
        Array(name.utf8).withUnsafeBytes { Attribute.lookup($0) }
    }

    @Test func everyWireNameFindsItsAttribute() {
        for attribute in Attribute.allCases {
            #expect(Self.lookup(attribute.wireName) == attribute, "\(attribute.wireName)")
        }
    }

    @Test func nearMissesFindNothing() {
        for attribute in Attribute.allCases {
            let name = attribute.wireName
            #expect(Self.lookup(name.uppercased()) == nil)
            #expect(Self.lookup(String(name.dropLast())) == nil)
            #expect(Self.lookup(name + "x") == nil)
            #expect(Self.lookup(String(name.dropFirst()) + "x") == nil)
        }
        for other in ["", "x", "ccert_issuer", "ccert_pubkey_fingerprint", "encryption_cipher", "mail_version", "sasl_sender2"] {
            #expect(Self.lookup(other) == nil, "\(other)")
        }
    }

    /// The parser's inline table has a fixed size: two slots for every attribute, no more.
    @Test func theKnownTableHasTwoSlotsPerAttribute() {
        #expect(RequestParser.knownSlots == Attribute.allCases.count * 2)
        #expect(Attribute.allCases.map(\.rawValue) == Array(0..<Attribute.allCases.count))
    }
}
