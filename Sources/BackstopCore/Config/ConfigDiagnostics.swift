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

    /// Names for tables of an array ([[ratelimit.rule]]), so reports say which one by name.
    private var names: [[String]: String] = [:]

    public func report(_ path: [String], _ message: String) {
        issues.append(ConfigIssue(file: file, line: locator.line(of: path), key: key(path), message: message))
    }

    public func warn(_ path: [String], _ message: String) {
        warnings.append(ConfigIssue(file: file, line: locator.line(of: path), key: key(path), message: message))
    }

    /// From now on keys under `path` (e.g. ratelimit.rule.1) are shown as `name` (ratelimit.rule[name=outbound]).
    func name(_ path: [String], _ name: String) {
        names[path] = name
    }

    private func key(_ path: [String]) -> String {
        for cut in stride(from: path.count, through: 1, by: -1) {
            if let name = names[Array(path[..<cut])] { return ([name] + path[cut...]).joined(separator: ".") }
        }
        return path.joined(separator: ".")
    }

    public func report(line: Int?, key: String, _ message: String) {
        issues.append(ConfigIssue(file: file, line: line, key: key, message: message))
    }
}
