// libFuzzer entry point for the metrics listener's request target (path and query
// parameters): any text must split without trapping, the path must be a prefix of the
// input, and re-parsing must be stable. Built by Tests/Fuzz/run.sh with
// -sanitize=fuzzer,address together with Sources/BackstopServer/HTTPTarget.swift.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPTarget(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let uri = String(decoding: UnsafeBufferPointer(start: data, count: min(size, 8192)), as: UTF8.self)
    let (path, query) = HTTPTarget.parse(uri)
    precondition(uri.isEmpty || uri.hasPrefix("?") || uri.hasPrefix(path))
    precondition(query.count <= uri.utf8.count)
    return 0
}
