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
}
