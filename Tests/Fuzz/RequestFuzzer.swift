// libFuzzer entry point for the request parser and the response encoder: every input is
// fed to the parser in two pieces (split at a point chosen by the first byte) and must give
// the same requests (octets and every attribute), and an error exactly when fed whole does
// (which limit is named may differ: the limits are checked per piece, before any copy, so
// near max_request_bytes the first piece of a long line can be too large before the whole
// line is seen to be too long); every value of every
// parsed request goes through the encoder, whose output must be exactly one action line. Built by Tests/Fuzz/run.sh with -sanitize=fuzzer,address.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let first = bytes.first else { return 0 }
    let limits = ProtocolLimits(maxLineLength: 512, maxAttributes: 32, maxRequestBytes: 4096)
    var parser = RequestParser(limits: limits)
    let cut = min(size, Int(first) * size / 255)
    let raw = UnsafeRawBufferPointer(bytes)
    /// What a request is, for comparing: its octets, every attribute, every known value.
    func summary(_ request: PolicyRequest) -> String {
        var text = String(decoding: request.storage, as: UTF8.self)
        for (name, value) in request.attributes { text += "|\(name)=\(value)" }
        for attribute in Attribute.allCases { text += "|\(request.has(attribute)):\(request[attribute])" }
        return text
    }
    var whole = RequestParser(limits: limits)
    var wholeRequests: [String] = []
    var wholeFailed = false
    do {
        try whole.feed(raw) { wholeRequests.append(summary($0)) }
    } catch {
        wholeFailed = true
    }
    var splitRequests: [String] = []
    var splitFailed = false
    defer {
        precondition(splitRequests == wholeRequests, "a split changed the requests")
        precondition(splitFailed == wholeFailed, "a split changed whether the input is refused")
    }
    do {
        for part in [raw[..<cut], raw[cut...]] {
            try parser.feed(UnsafeRawBufferPointer(rebasing: part)) { request in
                splitRequests.append(summary(request))
                precondition(request.storage.count <= limits.maxRequestBytes)
                for (_, value) in request.attributes {
                    for action: PolicyAction in [.reject(value), .prepend("X-Fuzz: " + value), .reply(code: 550, enhanced: "5.7.1", text: value)] {
                        let wire = ResponseEncoder.encode(action)
                        precondition(wire.count >= 9 && wire.suffix(2) == [10, 10])
                        precondition(!wire.dropLast(2).contains(10) && !wire.contains(13) && !wire.contains(0))
                        precondition(String(validating: wire, as: UTF8.self) != nil)
                        precondition(wire.count <= "action=PREPEND ".utf8.count + ResponseEncoder.maxHeaderLine + 2)
                    }
                }
                // The known table (filled by the parser as each line ended) says what the
                // lines found again in the request's octets say: the last occurrence wins.
                let lines = request.attributes
                for attribute in Attribute.allCases {
                    let last = lines.last { $0.name == attribute.wireName }
                    precondition(request.has(attribute) == (last != nil), "known table and lines disagree")
                    precondition(request[attribute] == (last?.value ?? ""), "known table and lines disagree")
                }
                _ = request.protocolState
                _ = request.recipient
            }
            precondition(parser.bufferedBytes <= limits.maxRequestBytes)
        }
    } catch {
        // A protocol error closes the connection; that is a fine outcome.
        splitFailed = true
    }
    return 0
}
