// Reads recipient tables in the source format of a Postfix lookup table (what postmap
// reads; LookupTableText splits it into entries), so the file kept for
// relay_recipient_maps can be used as it is. Keys must be UTF-8; comments and values may
// hold any bytes. Every error names file:line. This file builds snapshots; it does not watch.

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
            expected += RecipientTableFile.countEntryLines(bytes)
            totalBytes += bytes.count
        }
        var builder = RecipientTableBuilder(expectedEntries: min(expected, RecipientTableFile.maxExpectedEntries), expectedKeyBytes: totalBytes,
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

    /// How many lines may start an entry (not blank, not a comment, not a continuation):
    /// what the table's arrays are sized for, so that a file of blank or comment lines does
    /// not reserve memory for entries it does not have.
    static func countEntryLines(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBufferPointer { buffer in
            var count = 0
            var lineStart = true
            for byte in buffer {
                if lineStart && byte != 10 && !LookupTableText.isBlank(byte) && byte != UInt8(ascii: "#") { count += 1 }
                lineStart = byte == 10
            }
            return count
        }
    }

    /// The most entries the arrays are sized for before parsing; a larger table grows them
    /// as it is read.
    static let maxExpectedEntries = 1 << 24

    static func parse(_ bytes: [UInt8], file: String, fileIndex: Int, into builder: inout RecipientTableBuilder,
                      issues: inout [ConfigIssue]) {
        var dropped = 0
        func report(_ line: Int, _ message: String) {
            if issues.count < maxIssues { issues.append(ConfigIssue(file: file, line: line, key: "", message: message)) } else { dropped += 1 }
        }
        bytes.withUnsafeBufferPointer { text in
            LookupTableText.forEachEntry(text, report: report) { entry in
                let keyBytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(text)[entry.key])
                // A virtual(5) domain line ("example.com  anything", in an alias file listed
                // as a table): the domain is ours, and its addresses are those listed.
                if !keyBytes.contains(UInt8(ascii: "@")), keyBytes.contains(UInt8(ascii: ".")) {
                    let domain = String(decoding: keyBytes, as: UTF8.self)
                    if let first = entry.value ?? entry.more.first, startsWithOverride(text, first) {
                        report(entry.line, "the domain line \"\(LogEscaping.escape(domain, limit: 120))\" takes no answer of its own: write @\(LogEscaping.escape(domain, limit: 120)) for every address of it")
                    } else if let failure = builder.addDomain(domain, file: fileIndex, line: entry.line) {
                        report(entry.line, "the domain \"\(LogEscaping.escape(domain, limit: 120))\" \(failure)")
                    }
                    return
                }
                var override: PolicyAction?
                if let first = entry.value ?? entry.more.first, startsWithOverride(text, first) {
                    let value = LookupTableText.value(of: entry, in: text)
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
        }
        if dropped > 0 {
            issues.append(ConfigIssue(file: file, line: nil, key: "", message: "\(dropped) more errors not shown"))
        }
    }

    /// Whether a value is an answer of its own: REJECT, DEFER (with or without text) or a
    /// 4NN/5NN reply. Anything else (OK, a count, a name) is ignored, as relay_recipient_maps does.
    static func startsWithOverride(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Bool {
        var wordEnd = range.lowerBound
        while wordEnd < range.upperBound, !LookupTableText.isBlank(text[wordEnd]) { wordEnd += 1 }
        let word = UnsafeBufferPointer(rebasing: text[range.lowerBound..<wordEnd])
        if AddressNormaliser.equalsIgnoringCase(word, "REJECT") || AddressNormaliser.equalsIgnoringCase(word, "DEFER") {
            return true
        }
        return word.count == 3 && (word[0] == UInt8(ascii: "4") || word[0] == UInt8(ascii: "5"))
            && word.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }
}
