// libFuzzer entry point for what a socketmap client and a BATV key file send: every input
// is fed to the netstring parser in two pieces (split at a point the first byte chooses);
// every key it yields is read as a BATV-tagged address and echoed in every reply kind, whose
// encoding must be one well-formed netstring with no control characters. The input is also
// parsed as a key file. Built by Tests/Fuzz/run.sh with -sanitize=fuzzer,address from the
// sources in socketmap-sources.txt.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSocketmap(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let first = bytes.first else { return 0 }
    var parser = SocketmapParser(maxLength: 512)
    let cut = min(size, Int(first) * size / 255)
    let raw = UnsafeRawBufferPointer(bytes)
    do {
        for part in [raw[..<cut], raw[cut...]] {
            try parser.feed(UnsafeRawBufferPointer(rebasing: part)) { request in
                precondition(request.map.utf8.count + request.key.utf8.count < 512 * 3 + 1)
                if let tagged = BATVTag.parse(request.key) {
                    precondition((0...9).contains(tagged.keyNumber) && (0...999).contains(tagged.expiryDay))
                    precondition(tagged.signature.utf8.count == 6 && tagged.signature == tagged.signature.lowercased())
                    // Octets, not Characters: "@" followed by a combining mark is one Character.
                    precondition(tagged.address.utf8.contains(UInt8(ascii: "@")) && tagged.address.utf8.first != UInt8(ascii: "@"))
                    precondition(BATVTag.looksTagged(request.key))
                }
                for reply: SocketmapReply in [.ok(request.key), .temp(request.map), .perm(request.key), .notFound] {
                    let wire = reply.encoded
                    guard let colon = wire.firstIndex(of: 58), let length = Int(String(decoding: wire[..<colon], as: UTF8.self)) else {
                        preconditionFailure("reply without a length")
                    }
                    precondition(wire.count == colon + 1 + length + 1 && wire.last == 44)
                    precondition(!wire.contains { $0 < 0x20 || $0 == 0x7F })
                    precondition(length <= "NOTFOUND ".utf8.count + SocketmapReply.maxData)
                }
            }
        }
    } catch is ProtocolError {
    } catch {
        preconditionFailure("unexpected error \(error)")
    }
    if let keys = try? BATVKeyFile.parse(Array(bytes), file: "fuzz") {
        precondition(!keys.isEmpty && keys.count <= 10)
        for key in keys { precondition(BATVKeyFile.secretOctets.contains(key.secret.count)) }
    }
    return 0
}
