// libFuzzer entry point for the worker wire format: every input is decoded as a frame body
// from a worker (hostile: a worker may be taken over) and as one from the server. Nothing
// may crash; what decodes must encode to the same octets (a worker's frame) or to a frame
// that decodes the same (a server's). Built by run.sh into one binary with the other SPF fuzzers (SPFFuzzers.swift).

public func fuzzWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let message = try? SPFWire.decodeFromWorker(bytes[...]) {
        let frame = SPFWire.frame(message)
        precondition(Array(frame[4...]) == bytes, "a worker frame decoded but encodes differently")
    }
    if let message = try? SPFWire.decodeToWorker(bytes[...]) {
        // What a worker decodes, the server encodes the same way (terms, positions, parts).
        let again = try? SPFWire.decodeToWorker(SPFWire.frame(message)[4...])
        precondition(again == message, "a server frame decoded, encoded and decoded differently")
    }
    _ = try? SPFWire.frameLength(bytes[...], limit: SPFWire.maxFromWorker)
    return 0
}
