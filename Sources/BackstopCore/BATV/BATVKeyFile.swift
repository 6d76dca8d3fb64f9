// The BATV key file: one key per line, `K SECRET` (K a digit 0-9, SECRET the rest of the
// line: 16 to 1024 octets, taken as written), comments and blank lines as in Postfix
// tables. The last key line is the newest and signs; every key verifies. The file must be readable by
// its owner only; it is read at start, at a configuration reload and at SIGHUP, and a
// broken edit keeps the keys in force. This file reads and checks; it signs nothing.

import Foundation

/// One signing key: its number (the K of the tag) and its secret.
public struct BATVKey: Sendable, Equatable {
    public let number: Int
    public let secret: [UInt8]

    public init(number: Int, secret: [UInt8]) {
        precondition((0...9).contains(number), "a BATV key number is one digit")
        self.number = number
        self.secret = secret
    }
}

public enum BATVKeyFile {
    /// The largest key file read (64 KiB).
    public static let maxFileBytes = 64 << 10
    /// A secret's length in octets.
    public static let secretOctets = 16...1024

    /// The keys of the file at `path`, in file order, or every problem with file:line.
    public static func load(_ path: String) throws(ConfigError) -> [BATVKey] {
        let bytes: [UInt8]
        do { bytes = try RegularFile.read(path, maxBytes: maxFileBytes, ownerOnly: true) } catch {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "cannot read the BATV key file: " + error.reason)])
        }
        return try parse(bytes, file: path)
    }

    /// Parses key-file text; `file` names it in the problems.
    public static func parse(_ bytes: [UInt8], file: String) throws(ConfigError) -> [BATVKey] {
        var keys: [BATVKey] = []
        var issues: [ConfigIssue] = []
        var seen: [Int: Int] = [:]  // key number -> line
        func report(_ line: Int, _ message: String) { issues.append(ConfigIssue(file: file, line: line, key: "", message: message)) }
        bytes.withUnsafeBufferPointer { text in
            LookupTableText.forEachEntry(text, report: report) { entry in
                let key = Array(text[entry.key])
                guard key.count == 1, let digit = key.first, digit >= 0x30, digit <= 0x39 else {
                    return report(entry.line, "a key line is a key number 0-9, a space and the secret, e.g. \"1 \" followed by 32 random characters")
                }
                let number = Int(digit - 0x30)
                guard entry.more.isEmpty else {
                    return report(entry.line, "key \(number) continues on an indented line: a secret is one line, and every key line starts at the left margin")
                }
                // The octets as written: decoding them as text would turn every byte that is
                // not UTF-8 into the same three, and another signer reading this file would
                // then make other signatures.
                let secret = entry.value.map { Array(text[$0]) } ?? []
                guard Self.secretOctets.contains(secret.count) else {
                    return report(entry.line, "key \(number): the secret must be \(secretOctets.lowerBound) to \(secretOctets.upperBound) octets (make one with: head -c 24 /dev/urandom | base64)")
                }
                if let first = seen[number] {
                    return report(entry.line, "key \(number) is already defined on line \(first): each key number once")
                }
                seen[number] = entry.line
                keys.append(BATVKey(number: number, secret: secret))
            }
        }
        if issues.isEmpty && keys.isEmpty {
            issues.append(ConfigIssue(file: file, line: nil, key: "", message: "no key: add a line such as \"1 \" followed by 32 random characters"))
        }
        if !issues.isEmpty { throw ConfigError(issues: issues) }
        return keys
    }
}
