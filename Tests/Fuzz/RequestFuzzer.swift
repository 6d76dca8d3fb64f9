// libFuzzer entry point for the request parser and the response encoder: every input is
// fed to the parser in two pieces (split at a point chosen by the first byte) and must give
// the same requests, and the same error or none, as when fed whole; every value of every
// parsed request goes through the encoder, whose output must be exactly one action line. Built by Tests/Fuzz/run.sh with -sanitize=fuzzer,address.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let first = bytes.first else { return 0 }
    let limits = ProtocolLimits(maxLineLength: 512, maxAttributes: 32, maxRequestBytes: 4096)
    var parser = RequestParser(limits: limits)
    let cut = min(size, Int(first) * size / 255)
    let raw = UnsafeRawBufferPointer(bytes)
    var whole = RequestParser(limits: limits)
    var wholeRequests: [[UInt8]] = []
    var wholeError: ProtocolError?
    do {
        try whole.feed(raw) { wholeRequests.append($0.storage) }
    } catch {
        wholeError = error as? ProtocolError
    }
    var splitRequests: [[UInt8]] = []
    var splitError: ProtocolError?
    defer {
        precondition(splitRequests == wholeRequests, "a split changed the requests")
        precondition(splitError == wholeError, "a split changed the error: \(String(describing: splitError)) against \(String(describing: wholeError))")
    }
    do {
        for part in [raw[..<cut], raw[cut...]] {
            try parser.feed(UnsafeRawBufferPointer(rebasing: part)) { request in
                splitRequests.append(request.storage)
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
                _ = request.protocolState
                _ = request.recipient
            }
            precondition(parser.bufferedBytes <= limits.maxRequestBytes)
        }
    } catch {
        // A protocol error closes the connection; that is a fine outcome.
        splitError = error as? ProtocolError
    }
    return 0
}
