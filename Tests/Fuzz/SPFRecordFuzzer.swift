// libFuzzer entry point for the SPF record grammar and what follows from it: every input
// is parsed as a TXT record; an accepted record must survive the worker wire format
// unchanged, and its rewrite for libspf2 (every domain-spec expanded, for an IPv4 and an
// IPv6 client) must stay within its bounds. Built by run.sh into one binary with the other SPF fuzzers (SPFFuzzers.swift).

public func fuzzSPFRecord(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let owner = DNSName(text: "example.org")!
    var answer = DNSAnswer(status: .success, ttl: 60)
    answer.texts = [bytes]
    answer.recordCount = 1
    let question = DNSQuestion(owner, .txt)
    let spf = SPFAnswer(answer, question: question)
    guard case .record(let record) = spf.spf else { return 0 }
    for d in record.directives {
        precondition(d.text.upperBound <= record.source.count)
        if let spec = d.domainSpec { precondition(spec.upperBound <= record.source.count) }
    }
    // Through the wire and back.
    let frame = SPFWire.frame(.answers(id: 1, [SPFWire.Answer(question, spf)]))
    guard case .answers(_, let back)? = try? SPFWire.decodeToWorker(frame[4...]), back.count == 1,
          back[0].answer.spf == spf.spf else { preconditionFailure("record changed on the wire") }
    // The rewrite a worker makes, for two clients.
    for client in [[UInt8]([192, 0, 2, 1]), [UInt8](repeating: 0x20, count: 16)] {
        let evaluate = SPFWire.Evaluate(id: 1, identity: .mailfrom, upperNibbles: false, client: client,
                                        sender: Array("user.name@example.org".utf8), helo: Array("mail.example.org".utf8),
                                        answers: [SPFWire.Answer(question, spf)])
        let run = SPFRun(SPFWorkerEvaluation(evaluate), receiver: Array("mx.test".utf8), maxQueries: 140)
        let rewritten = run.rewrite(record, domain: Array("example.org".utf8))
        precondition(rewritten.terms.count <= record.directives.count)
        precondition(rewritten.terms.filter { !$0.hasSuffix("all") && !$0.contains("ptr:") }.count <= 11)
        _ = run.chain(rewritten) { text, _ in text.count < 400 }
    }
    return 0
}
