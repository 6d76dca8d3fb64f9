// libFuzzer entry point for SPF macro expansion: the input is split into a macro-string and
// a sender; the string is expanded as a domain-spec and as an explanation for an IPv4 and
// an IPv6 client. An expanded domain must be at most 253 octets, an
// explanation at most SPFMacro.maxExplanation octets. Built by run.sh (libFuzzer's
// -timeout catches an expansion that is not linear).

public func fuzzSPFMacro(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let split = bytes.firstIndex(of: 0) ?? bytes.count
    let spec = bytes[..<split]
    var sender = Array(bytes[min(split + 1, bytes.count)...].prefix(1_024))
    if !sender.contains(UInt8(ascii: "@")) { sender += Array("@example.org".utf8) }
    for client in [IPAddress.v4(0xC000_0201), .v6(0x2001_0DB8_0000_0000, 1)] {
        var context = SPFMacroContext(sender: sender, domain: Array("a.b.example.org".utf8), client: client,
                                      helo: Array("mail.example.org".utf8), receiver: Array("mx.test".utf8))
        context.validated = Array("host.example.org".utf8)
        if SPFMacro.check(spec, explanation: false) == nil, let name = context.expandDomain(spec) {
            precondition(name.count <= SPFMacro.maxDomain)
        }
        if let text = context.expandExplanation(spec) {
            precondition(text.count <= SPFMacro.maxExplanation)
        }
    }
    return 0
}
