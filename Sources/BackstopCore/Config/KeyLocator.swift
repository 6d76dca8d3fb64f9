// Finds the line on which a TOML key is defined, so errors can point at it. TOMLKit does
// not keep source positions for values; this scans table headers and `key =` lines, which
// covers every form the example configuration uses (dotted keys, [a.b], [[array]]).

struct KeyLocator: Sendable {
    private var lines: [String: Int] = [:]

    init(text: String) {
        var table: [String] = []
        var arrayCounts: [String: Int] = [:]
        var number = 0
        // "\r\n" is one Character: a file with CRLF line ends is split on it too. A BOM
        // before the first line is no part of it.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            number += 1
            let line = (number == 1 && rawLine.first == "\u{FEFF}" ? rawLine.dropFirst() : rawLine).trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[[") , let close = line.range(of: "]]") {
                let name = Self.keyPath(String(line[line.index(line.startIndex, offsetBy: 2)..<close.lowerBound]))
                let joined = name.joined(separator: ".")
                let index = arrayCounts[joined, default: 0]
                arrayCounts[joined] = index + 1
                table = name + [String(index)]
                record(table, number)
            } else if line.hasPrefix("["), let close = line.firstIndex(of: "]") {
                table = Self.keyPath(String(line[line.index(after: line.startIndex)..<close]))
                record(table, number)
            } else if let eq = Self.equalsIndex(line) {
                let key = Self.keyPath(String(line[..<eq]))
                record(table + key, number)
            }
        }
    }

    private mutating func record(_ path: [String], _ line: Int) {
        let key = path.joined(separator: ".")
        if lines[key] == nil { lines[key] = line }
    }

    /// The line of `path`, or of its nearest enclosing table.
    func line(of path: [String]) -> Int? {
        var path = path
        while !path.isEmpty {
            if let line = lines[path.joined(separator: ".")] { return line }
            path.removeLast()
        }
        return nil
    }

    /// The '=' that ends the key, skipping any '=' inside a quoted key.
    static func equalsIndex(_ line: String) -> String.Index? {
        var quote: Character?
        for index in line.indices {
            let c = line[index]
            if let q = quote { if c == q { quote = nil } ; continue }
            if c == "\"" || c == "'" { quote = c; continue }
            if c == "=" { return index }
        }
        return nil
    }

    /// Splits `a."b.c".d` into ["a", "b.c", "d"].
    static func keyPath(_ raw: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character?
        for c in raw {
            if let q = quote {
                if c == q { quote = nil } else { current.append(c) }
                continue
            }
            switch c {
            case "\"", "'": quote = c
            case ".": parts.append(current.trimmingSpaces); current = ""
            default: current.append(c)
            }
        }
        parts.append(current.trimmingSpaces)
        return parts
    }
}
