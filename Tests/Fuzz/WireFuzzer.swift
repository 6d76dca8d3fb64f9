// libFuzzer entry point for the worker wire format: every input is decoded as a frame body
// from a worker (hostile: a worker may be taken over) and as one from the server. Nothing
// may crash; what decodes must encode to the same octets. Built by run.sh into one binary with the other SPF fuzzers (SPFFuzzers.swift).

public func fuzzWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let message = try? SPFWire.decodeFromWorker(bytes[...]) {
        let frame = SPFWire.frame(message)
        precondition(Array(frame[4...]) == bytes, "a worker frame decoded but encodes differently")
    }
    _ = try? SPFWire.decodeToWorker(bytes[...])
    _ = try? SPFWire.frameLength(bytes[...], limit: SPFWire.maxFromWorker)
    return 0
}
