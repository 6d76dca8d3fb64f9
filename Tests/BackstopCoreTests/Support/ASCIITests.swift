// ASCII.check word by word: an 8-bit octet is found at every position, in the words and in
// the tail after them.

import Testing
@testable import BackstopCore

struct ASCIITests {
    @Test func anEightBitOctetIsFoundWhereverItIs() {
        for length in 0...19 {
            let plain = [UInt8](repeating: UInt8(ascii: "a"), count: length)
            #expect(plain.withUnsafeBytes { ASCII.check($0) }, "length \(length)")
            for position in 0..<length {
                for high: UInt8 in [0x80, 0xC3, 0xFF] {
                    var bytes = plain
                    bytes[position] = high
                    #expect(!bytes.withUnsafeBytes { ASCII.check($0) }, "length \(length), 0x\(String(high, radix: 16)) at \(position)")
                }
            }
        }
        #expect(ASCII.check("mail.example.org\u{7F}\t"))
        #expect(!ASCII.check("mail.bücher.example"))
    }

    /// ASCII.contains finds each octet asked for, and an 8-bit one only when asked, at every
    /// position of every length (words, the overlapping last word, short text); text without
    /// them is plain.
    @Test func containsFindsEveryOctetWhereverItIs() {
        for length in 0...25 {
            let plain = [UInt8](repeating: UInt8(ascii: "a"), count: length)
            #expect(!plain.withUnsafeBytes { ASCII.contains(0x28, 0x29, 0x5C, eightBit: true, in: $0) }, "length \(length)")
            for position in 0..<length {
                for octet: UInt8 in [0x28, 0x29, 0x5C, 0x80, 0xFF, 0x22, 0x27, 0x5B] {
                    var bytes = plain
                    bytes[position] = octet
                    let wanted = octet == 0x28 || octet == 0x29 || octet == 0x5C
                    #expect(bytes.withUnsafeBytes { ASCII.contains(0x28, 0x29, 0x5C, eightBit: true, in: $0) } == (wanted || octet >= 0x80),
                            "length \(length), 0x\(String(octet, radix: 16)) at \(position)")
                    #expect(bytes.withUnsafeBytes { ASCII.contains(0x28, 0x29, 0x5C, eightBit: false, in: $0) } == wanted,
                            "length \(length), 0x\(String(octet, radix: 16)) at \(position), 8-bit allowed")
                }
            }
        }
    }
}
