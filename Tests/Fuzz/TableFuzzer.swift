// libFuzzer entry point for the recipient-table parser: every input is parsed as a table
// file, the result is built into a table, and lookups of a few addresses (and of the
// input's first line as an address) must answer without crashing. Built by
// Tests/Fuzz/run.sh with -sanitize=fuzzer,address from the sources in table-sources.txt.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTable(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let rules = RecipientNormalisation()
    var builder = RecipientTableBuilder(expectedEntries: 16, rules: rules)
    var issues: [ConfigIssue] = []
    RecipientTableFile.parse(bytes, file: "fuzz", fileIndex: 0, into: &builder, issues: &issues)
    let table = builder.finish(files: ["fuzz"])
    let firstLine = String(decoding: bytes.prefix { $0 != 10 }.prefix(300), as: UTF8.self)
    for address in ["user@example.com", "USER+tag@Example.COM.", "prvs=1234abcdef=user@example.com",
                    "\"a b\"@example.com", "ü@bücher.example", firstLine] {
        _ = table.lookup(address, rules: rules)
    }
    for issue in issues { precondition(issue.line == nil || issue.line! >= 1) }
    return 0
}
