// libFuzzer entry point for the rate-limit state file (`[ratelimit] state_file`), which the
// server reads at start from disk: every input is decoded with a small entry bound; what
// decodes must encode back to the same bytes and respect the bound. Built by
// Tests/Fuzz/run.sh with -sanitize=fuzzer,address.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStateFile(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The checksum would stop almost every mutation at the first check: fuzz both the input
    // as it is and the input with a valid checksum appended, so the entry decoder is reached.
    var sealed = bytes
    let sum = MemoryStoreSnapshot.checksum(bytes[...])
    for shift in stride(from: 56, through: 0, by: -8) { sealed.append(UInt8(truncatingIfNeeded: sum >> UInt64(shift))) }
    for input in [bytes, sealed] {
        if case .success(let snapshot) = MemoryStoreSnapshot.decode(input, maxEntries: 64) {
            precondition(snapshot.entries.count <= 64)
            precondition(snapshot.encoded() == input, "a decoded snapshot encodes to other bytes")
        }
    }
    return 0
}
