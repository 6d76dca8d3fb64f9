// Escaping for log lines: control characters, and the Unicode scalars that break or reorder
// a line in a viewer, never reach the log as they are.

import Testing
@testable import BackstopCore

@Suite struct LogEscapingTests {
    @Test func controlsAndLayoutScalarsAreEscaped() {
        #expect(LogEscaping.escape("a\nb\r\u{1B}[2J\u{85}") == "a\\nb\\r\\x1B[2J\\x85")
        // Line and paragraph separators, bidi marks, overrides and isolates, the BOM.
        #expect(LogEscaping.escape("x\u{2028}y\u{2029}z") == "x\\u{2028}y\\u{2029}z")
        #expect(LogEscaping.escape("\u{202E}gpj.exe\u{202C}") == "\\u{202E}gpj.exe\\u{202C}")
        #expect(LogEscaping.escape("\u{2066}\u{2069}\u{200E}\u{200F}\u{061C}\u{FEFF}") == "\\u{2066}\\u{2069}\\u{200E}\\u{200F}\\u{61C}\\u{FEFF}")
        // Printable text in any script stays readable.
        #expect(LogEscaping.escape("bücher.example 例え") == "bücher.example 例え")
        #expect(LogEscaping.field("a\u{2028}b") == "a\\u{2028}b")
        #expect(LogEscaping.field("a b") == "\"a b\"")
    }

    /// A value is bounded in escaped octets, not in characters: 600 right-to-left overrides
    /// escaped to 4,800 octets (8 each) under a 512-character limit.
    @Test func anEscapedValueIsBoundedInOctets() {
        let hostile = String(repeating: "\u{202E}", count: 600)
        let escaped = LogEscaping.escape(hostile)
        #expect(escaped.utf8.count <= LogEscaping.maxFieldOctets + "…".utf8.count, "\(escaped.utf8.count)")
        #expect(escaped.hasSuffix("\\u{202E}…"), "cut between whole escapes")
        #expect(LogEscaping.escape(String(repeating: "é", count: 600)).utf8.count <= LogEscaping.maxFieldOctets + 3)
        #expect(LogEscaping.escape("short") == "short")
        #expect(LogEscaping.escape("abcdef", limit: 3) == "abc…")
    }
}
