// Errors found while reading a configuration file, each with file, line and key, so
// `backstop check-config` can list every problem at once instead of stopping at the first.

public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var key: String
    public var message: String

    public var description: String {
        let place = line.map { "\(file):\($0)" } ?? file
        return key.isEmpty ? "\(place): \(message)" : "\(place): \(key): \(message)"
    }
}

public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var issues: [ConfigIssue]
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Collects issues while a file is read; shared by every section reader of one file.
/// @unchecked Sendable: a file is read on one thread, start to finish; check readers are
/// @Sendable closures that receive it there and never keep it.
public final class ConfigDiagnostics: @unchecked Sendable {
    public let file: String
    let locator: KeyLocator
    public private(set) var issues: [ConfigIssue] = []
    /// Settings that are valid but can never take effect (a check listed in no stage).
    public private(set) var warnings: [ConfigIssue] = []

    public init(file: String, text: String) {
        self.file = file
        self.locator = KeyLocator(text: text)
    }

    public func report(_ path: [String], _ message: String) {
        issues.append(ConfigIssue(file: file, line: locator.line(of: path), key: path.joined(separator: "."), message: message))
    }

    public func warn(_ path: [String], _ message: String) {
        warnings.append(ConfigIssue(file: file, line: locator.line(of: path), key: path.joined(separator: "."), message: message))
    }

    public func report(line: Int?, key: String, _ message: String) {
        issues.append(ConfigIssue(file: file, line: line, key: key, message: message))
    }
}
