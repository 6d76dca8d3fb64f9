// The libFuzzer entry point of the four SPF fuzzers (DNS decoder, record grammar, macro
// expansion, worker wire format). They read the same sources, so run.sh builds them once,
// into one binary, and BACKSTOP_FUZZ names the one a run exercises: dns, spf-record,
// spf-macro or spf-wire. Each target's checks are in its own file.

import Glibc

private enum Target { case dns, record, macro, wire }

private let target: Target = {
    switch getenv("BACKSTOP_FUZZ").map({ String(cString: $0) }) {
    case "dns": return .dns
    case "spf-record": return .record
    case "spf-macro": return .macro
    case "spf-wire": return .wire
    default: fatalError("BACKSTOP_FUZZ must name dns, spf-record, spf-macro or spf-wire")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSPF(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    switch target {
    case .dns: return fuzzDNS(data, size)
    case .record: return fuzzSPFRecord(data, size)
    case .macro: return fuzzSPFMacro(data, size)
    case .wire: return fuzzWire(data, size)
    }
}
