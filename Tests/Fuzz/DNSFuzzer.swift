// libFuzzer entry point for the DNS message decoder: every input is decoded as the answer
// to a question of each type SPF asks (the ID taken from the input itself, so replies that
// are ours are reached), and each answer is turned into its SPF view. Nothing may crash,
// and every bound must hold: names ≤ 255 octets, kept names ≤ 11. Built by run.sh into one binary with the other SPF fuzzers (SPFFuzzers.swift).

public func fuzzDNS(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let id = bytes.count >= 2 ? UInt16(bytes[0]) << 8 | UInt16(bytes[1]) : 0
    let name = DNSName(text: "example.org")!
    for type in [DNSType.a, .aaaa, .mx, .ptr, .txt] {
        let question = DNSQuestion(name, type)
        guard case .answer(let answer) = DNSMessage.decode(bytes, id: id, question: question) else { continue }
        precondition(answer.names.count <= DNSMessage.maxNamesKept)
        for n in answer.names { precondition(n.wire.count <= DNSName.maxWireLength) }
        precondition(type == .a ? answer.addresses.count % 4 == 0 : true)
        precondition(answer.ttl <= 0x7FFF_FFFF, "a TTL with the high bit set counts as 0")
        let spf = SPFAnswer(answer, question: question)
        if case .invalid(let why) = spf.spf { precondition(why.utf8.count <= SPFAnswer.maxProblem) }
        precondition(spf.explanation.map { $0.count <= SPFAnswer.maxExplanationSource } ?? true)
        _ = spf.cost
    }
    // The same octets as a name written in text.
    if let text = DNSName(text: String(decoding: bytes.prefix(300), as: UTF8.self)) {
        precondition(text.wire.count <= DNSName.maxWireLength)
        _ = text.description
    }
    return 0
}
