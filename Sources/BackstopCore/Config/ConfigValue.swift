// A plain, Sendable copy of a parsed TOML document. TOMLKit parses; everything after
// works on this tree so readers and tests need no C-backed objects.

import TOMLKit

public indirect enum ConfigValue: Sendable, Equatable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case array([ConfigValue])
    case table([String: ConfigValue], order: [String])
    case other(String)

    var typeName: String {
        switch self {
        case .string: "a string"
        case .int: "an integer"
        case .double: "a number"
        case .bool: "true or false"
        case .array: "an array"
        case .table: "a table"
        case .other(let t): t
        }
    }

    init(_ value: any TOMLValueConvertible) {
        switch value.tomlValue.type {
        case .string: self = .string(value.string ?? "")
        case .int: self = .int(value.int ?? 0)
        case .double: self = .double(value.double ?? 0)
        case .bool: self = .bool(value.bool ?? false)
        case .array: self = .array((value.array.map { Array($0) } ?? []).map { ConfigValue($0) })
        case .table:
            let table = value.table!
            var dict: [String: ConfigValue] = [:]
            let keys = table.keys
            for key in keys { if let v = table[key] { dict[key] = ConfigValue(v) } }
            self = .table(dict, order: keys)
        default: self = .other("a date or time")
        }
    }

    /// Parses TOML text; a syntax error is reported with its line and column.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> ConfigValue {
        do {
            let table = try TOMLTable(string: text)
            return ConfigValue(table)
        } catch let error as TOMLParseError {
            throw ConfigError(issues: [ConfigIssue(file: file, line: error.source.begin.line, key: "",
                                                   message: "TOML syntax error at column \(error.source.begin.column): \(error.description)")])
        } catch {
            throw ConfigError(issues: [ConfigIssue(file: file, line: nil, key: "", message: "cannot parse: \(error)")])
        }
    }
}
