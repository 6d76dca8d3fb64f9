// libFuzzer entry point for the rate-limit override table and the limit and duration text
// it holds (the same DurationText reads every duration of the configuration): each input
// is parsed as an overrides file for a one-part key and for a client_address rule, every
// entry's limit must be one GCRA can count, and a few keys are looked up; each line is also
// read alone as a limit and as a duration. Nothing may trap. Built by Tests/Fuzz/run.sh with
// -sanitize=fuzzer,address from the sources in overrides-sources.txt.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOverrides(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    for spec in [RateKeySpec(parts: [.sender]), RateKeySpec(parts: [.clientAddress], ipv4Prefix: 24, ipv6Prefix: 48)] {
        let (table, issues) = RateOverrides.parse(bytes, file: "fuzz", spec: spec)
        precondition(table.count <= RateOverrides.maxEntries)
        for issue in issues { precondition(issue.line == nil || issue.line! >= 1) }
        for address in ["192.0.2.1", "2001:db8::1", "10.0.0.0"] {
            if case .limit(let o)? = table.lookup(key: Array(address.utf8), client: IPAddress(address))?.limit {
                precondition(o.limitCount > 0 && o.period > 0 && o.parameters.burst > 0)
                _ = o.description
            }
        }
    }
    for line in String(decoding: bytes.prefix(4096), as: UTF8.self).split(separator: "\n").prefix(64) {
        let text = String(line)
        if case .success(.limit(let o)) = RateOverrides.limit(text) {
            precondition(o.limitCount > 0 && o.period > 0)
        }
        if let ns = DurationText.nanoseconds(text) {
            precondition(ns >= 0)
            _ = DurationText.format(nanoseconds: ns)
            _ = DurationText.approximate(nanoseconds: ns)
        }
        _ = RateLimitText.parseCount(text)
    }
    return 0
}
