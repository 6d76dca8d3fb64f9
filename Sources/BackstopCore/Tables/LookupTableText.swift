// The source format of a Postfix lookup table (what postmap reads), split into entries for
// the tables Backstop reads (recipients, rate-limit overrides):
//   key  value        one entry per logical line; key and value separated by whitespace
//   # comment         a line whose first non-blank character is "#" is ignored
//   (blank line)      ignored
//     continued       a line starting with whitespace continues the previous entry's value
// CRLF line ends and tabs are accepted, and a UTF-8 byte order mark before the first line
// is dropped; a line holding another control character (NUL, a carriage return that does not
// end it) is reported, not read. A key that starts with a double quote runs to its closing
// quote ("john doe"@example.com). What keys and values mean is the caller's business.

enum LookupTableText {
    /// One logical line: the key and the value's pieces (continuations).
    struct Entry {
        var line: Int
        var key: Range<Int>
        /// The value on the entry's first line; continuation lines go to `more` (rare, so
        /// the common entry allocates nothing).
        var value: Range<Int>?
        var more: [Range<Int>] = []
    }

    @inline(__always)
    static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0B || b == 0x0C }

    /// The whole value, its pieces joined by single spaces.
    static func value(of entry: Entry, in text: UnsafeBufferPointer<UInt8>) -> String {
        ((entry.value.map { [$0] } ?? []) + entry.more).map { String(decoding: text[$0], as: UTF8.self) }.joined(separator: " ")
    }

    /// Calls `body` for every entry in order and `report` (line, message) for a line that
    /// cannot start or continue one.
    static func forEachEntry(_ text: UnsafeBufferPointer<UInt8>, report: (Int, String) -> Void, _ body: (Entry) -> Void) {
        var pending: Entry?
        var lineNumber = 0
        let count = text.count
        // A byte order mark (Windows editors write one) is no part of the first key.
        var start = count >= 3 && text[0] == 0xEF && text[1] == 0xBB && text[2] == 0xBF ? 3 : 0
        while start < count {
            lineNumber += 1
            var end = start
            var control = -1  // the first control character other than the blanks (a CR counts)
            while end < count {
                let b = text[end]
                if b == 10 { break }
                if b < 0x20, control < 0, b == 0x0D || !isBlank(b) { control = end }
                end += 1
            }
            let next = end + 1
            // Trailing blanks (and the CR of CRLF) are not part of the line.
            while end > start, isBlank(text[end - 1]) { end -= 1 }
            var first = start
            while first < end, isBlank(text[first]) { first += 1 }
            if first == end || text[first] == UInt8(ascii: "#") {
                start = next  // blank line or comment: ignored, does not end an entry
                continue
            }
            // Before the end that is left (the CR of CRLF is gone): a table is text.
            if control >= 0, control < end {
                report(lineNumber, text[control] == 0x0D
                       ? "a carriage return inside the line: save the file with LF (or CRLF) line ends"
                       : "a control character (byte \(text[control])) in the line: a table is text")
                start = next
                continue
            }
            if first > start {
                if pending == nil {
                    report(lineNumber, "the line starts with whitespace, so it continues an entry, but there is no entry before it: remove the leading whitespace")
                } else {
                    pending!.more.append(first..<end)
                }
                start = next
                continue
            }
            if let entry = pending { body(entry) }
            // The key runs to the first blank outside a quoted local part.
            // Quotes only count when the key starts with one ("john doe"@example.com).
            var keyEnd = start
            var quoted = false
            let quotable = text[start] == UInt8(ascii: "\"")
            while keyEnd < end {
                let b = text[keyEnd]
                if quotable, b == UInt8(ascii: "\"") {
                    quoted.toggle()
                } else if quoted, b == UInt8(ascii: "\\"), keyEnd + 1 < end {
                    keyEnd += 1
                } else if !quoted, isBlank(b) {
                    break
                }
                keyEnd += 1
            }
            var valueStart = keyEnd
            while valueStart < end, isBlank(text[valueStart]) { valueStart += 1 }
            pending = Entry(line: lineNumber, key: start..<keyEnd, value: valueStart < end ? valueStart..<end : nil)
            start = next
        }
        if let entry = pending { body(entry) }
    }
}
