// Temporary directories and table files for the recipient tests: real files on disk,
// removed when the test's directory goes away.

import Foundation
@testable import BackstopCore

final class RecipientTableDirectory: @unchecked Sendable {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "backstop-recipients-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        try write(name, bytes: Array(text.utf8))
    }

    /// Writes in place (same inode), as `echo … > file` or an editor without backups does.
    @discardableResult
    func write(_ name: String, bytes: [UInt8]) throws -> String {
        let target = file(name)
        let fd = open(target, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown) }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            guard n > 0 else { throw CocoaError(.fileWriteUnknown) }
            offset += n
        }
        return target
    }

    /// Writes a new file and renames it over `name` (new inode), as vim and many tools do.
    func replace(_ name: String, _ text: String) throws {
        let temporary = try write(name + ".tmp~", text)
        guard rename(temporary, file(name)) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }

    func remove(_ name: String) { unlink(file(name)) }

    /// Loads one table file with the given key rules.
    func table(_ text: String, name: String = "recipients", domains: [String] = [],
               caseSensitive: Bool = false) throws -> RecipientTable {
        let path = try write(name, text)
        return try RecipientTableSource(files: [path], domains: domains, caseSensitiveLocalPart: caseSensitive).load()
    }
}

/// Waits until `condition` holds, polling every 10 ms, for at most `seconds` (generous:
/// parallel tests such as the million-entry load can starve the reload thread).
func recipientsEventually(_ seconds: Double = 20, _ condition: () -> Bool) async -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        try? await Task.sleep(nanoseconds: 10_000_000)
    }
    return condition()
}

func recipientRequest(_ recipient: String) -> PolicyRequest {
    PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("recipient", recipient)])
}
