// Reads recipient tables in the source format of a Postfix lookup table (what postmap
// reads), so the file kept for relay_recipient_maps can be used as it is:
//   key  value        one entry per logical line; key and value separated by whitespace
//   # comment         a line whose first non-blank character is "#" is ignored
//   (blank line)      ignored
//     continued       a line starting with whitespace continues the previous entry's value
// CRLF line ends and tabs are accepted. Keys must be UTF-8; comments and values may hold
// any bytes. Every error names file:line. This file builds snapshots; it does not watch.

import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a table snapshot comes from; two equal sources give equal tables.
public struct RecipientTableSource: Sendable, Equatable {
    /// Table files, absolute or relative to the working directory, read in order.
    public var files: [String]
    /// Domains we receive mail for besides those named in the tables.
    public var domains: [String]
    public var caseSensitiveLocalPart: Bool

    public init(files: [String], domains: [String] = [], caseSensitiveLocalPart: Bool = false) {
        self.files = files
        self.domains = domains
        self.caseSensitiveLocalPart = caseSensitiveLocalPart
    }

    /// The name entries from `domains` are reported under.
    public static let configuredDomainsName = "configuration (domains)"

    /// Reads every file and builds one snapshot; throws every problem found, each with file:line.
    public func load() throws(ConfigError) -> RecipientTable {
        var contents: [[UInt8]] = []
        var issues: [ConfigIssue] = []
        for file in files {
            do { contents.append(try RecipientTableFile.contents(of: file)) } catch { issues.append(contentsOf: error.issues) }
        }
        if !issues.isEmpty { throw ConfigError(issues: issues) }
        var expected = domains.count + 16
        var totalBytes = 0
        for bytes in contents {
            expected += RecipientTableFile.countLines(bytes)
            totalBytes += bytes.count
        }
        var builder = RecipientTableBuilder(expectedEntries: expected, expectedKeyBytes: totalBytes,
                                            rules: RecipientNormalisation(caseSensitiveLocalPart: caseSensitiveLocalPart))
        for domain in domains {
            if let failure = builder.addDomain(domain, file: files.count) {
                issues.append(ConfigIssue(file: Self.configuredDomainsName, line: nil, key: "recipients.domains",
                                          message: "\"\(LogEscaping.escape(domain))\" \(failure)"))
            }
        }
        for index in contents.indices {
            RecipientTableFile.parse(contents[index], file: files[index], fileIndex: index, into: &builder, issues: &issues)
            contents[index] = []  // keep peak memory down on large tables
        }
        if builder.arenaSize > Int(UInt32.max) {
            issues.append(ConfigIssue(file: files.last ?? "", line: nil, key: "", message: "the tables hold more than 4 GiB of keys: split the service"))
        }
        if !issues.isEmpty { throw ConfigError(issues: issues) }
        return builder.finish(files: files + [Self.configuredDomainsName])
    }
}

enum RecipientTableFile {
    /// At most this many errors are listed per load; the rest are counted.
    static let maxIssues = 50

    /// The largest table file read (1 GiB); the tables together may hold at most 4 GiB of keys.
    static let maxFileBytes = 1 << 30

    /// The whole file, or an issue saying why it cannot be read.
    static func contents(of path: String) throws(ConfigError) -> [UInt8] {
        do { return try RegularFile.read(path, maxBytes: maxFileBytes) } catch {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "cannot read the recipient table: " + error.reason)])
        }
    }

    static func countLines(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBufferPointer { buffer in
            var count = 1
            for byte in buffer where byte == 10 { count += 1 }
            return count
        }
    }

    @inline(__always)
    static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0B || b == 0x0C }

    /// One logical line being collected: the key and the value's pieces (continuations).
    struct Pending {
        var line: Int
        var key: Range<Int>
        /// The value on the entry's first line; continuation lines go to `more` (rare, so
        /// the common entry allocates nothing).
        var value: Range<Int>?
        var more: [Range<Int>] = []
    }

    static func parse(_ bytes: [UInt8], file: String, fileIndex: Int, into builder: inout RecipientTableBuilder,
                      issues: inout [ConfigIssue]) {
        var dropped = 0
        func report(_ line: Int, _ message: String) {
            if issues.count < maxIssues { issues.append(ConfigIssue(file: file, line: line, key: "", message: message)) } else { dropped += 1 }
        }
        bytes.withUnsafeBufferPointer { text in
            func finish(_ entry: Pending) {
                let keyBytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(text)[entry.key])
                var override: PolicyAction?
                if let first = entry.value ?? entry.more.first, startsWithOverride(text, first) {
                    let parts = (entry.value.map { [$0] } ?? []) + entry.more
                    let value = parts.map { String(decoding: text[$0], as: UTF8.self) }.joined(separator: " ")
                    do { override = try PolicyAction(parsing: value) } catch {
                        report(entry.line, "the value \"\(LogEscaping.escape(value, limit: 80))\" is not a valid answer: \(error)")
                        return
                    }
                }
                if let failure = builder.add(key: keyBytes, file: fileIndex, line: entry.line, override: override) {
                    let shown = String(decoding: text[entry.key], as: UTF8.self)
                    report(entry.line, "the key \"\(LogEscaping.escape(shown, limit: 120))\" \(failure)")
                }
            }

            var pending: Pending?
            var lineNumber = 0
            var start = 0
            let count = text.count
            while start < count {
                lineNumber += 1
                var end = start
                while end < count, text[end] != 10 { end += 1 }
                let next = end + 1
                // Trailing blanks (and the CR of CRLF) are not part of the line.
                while end > start, isBlank(text[end - 1]) { end -= 1 }
                var first = start
                while first < end, isBlank(text[first]) { first += 1 }
                if first == end || text[first] == UInt8(ascii: "#") {
                    start = next  // blank line or comment: ignored, does not end an entry
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
                if let entry = pending { finish(entry) }
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
                pending = Pending(line: lineNumber, key: start..<keyEnd, value: valueStart < end ? valueStart..<end : nil)
                start = next
            }
            if let entry = pending { finish(entry) }
        }
        if dropped > 0 {
            issues.append(ConfigIssue(file: file, line: nil, key: "", message: "\(dropped) more errors not shown"))
        }
    }

    /// Whether a value is an answer of its own: REJECT, DEFER (with or without text) or a
    /// 4NN/5NN reply. Anything else (OK, a count, a name) is ignored, as relay_recipient_maps does.
    static func startsWithOverride(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Bool {
        var wordEnd = range.lowerBound
        while wordEnd < range.upperBound, !isBlank(text[wordEnd]) { wordEnd += 1 }
        let word = UnsafeBufferPointer(rebasing: text[range.lowerBound..<wordEnd])
        if AddressNormaliser.equalsIgnoringCase(word, "REJECT") || AddressNormaliser.equalsIgnoringCase(word, "DEFER") {
            return true
        }
        return word.count == 3 && (word[0] == UInt8(ascii: "4") || word[0] == UInt8(ascii: "5"))
            && word.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }
}
