// Request mixes for `backstop bench`, in the same format as the shared policyload tool:
// blocks of name=value lines separated by blank lines, used round-robin, with
// placeholders {rand:N} {rand:A-B} {pick:a|b} {seq} {seqhex} {conn} and {{ }} escapes.

import Foundation

struct BenchMix: Sendable {
    enum Piece: Sendable {
        case text([UInt8])
        case rand(Int, Int)
        case pick([[UInt8]])
        case seq
        case seqhex
        case conn
    }
    /// Each block is a list of pieces; expanding them gives the request bytes.
    let blocks: [[Piece]]

    init(text: String) throws {
        var blocks: [[Piece]] = []
        var current = ""
        func flush() throws {
            if !current.isEmpty {
                blocks.append(try Self.compile(current + "\n"))
                current = ""
            }
        }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("#") { continue }
            if line.trimmingCharacters(in: .whitespaces).isEmpty { try flush(); continue }
            current += current.isEmpty ? String(line) : "\n" + line
        }
        try flush()
        guard !blocks.isEmpty else { throw BenchError("the mix has no request blocks") }
        self.blocks = blocks
    }

    static func compile(_ block: String) throws -> [Piece] {
        var pieces: [Piece] = []
        var literal: [UInt8] = []
        var chars = Substring(block)
        while let c = chars.first {
            if chars.hasPrefix("{{") { literal.append(UInt8(ascii: "{")); chars = chars.dropFirst(2); continue }
            if chars.hasPrefix("}}") { literal.append(UInt8(ascii: "}")); chars = chars.dropFirst(2); continue }
            if c == "{", let close = chars.firstIndex(of: "}") {
                let spec = String(chars[chars.index(after: chars.startIndex)..<close])
                if !literal.isEmpty { pieces.append(.text(literal)); literal = [] }
                pieces.append(try placeholder(spec))
                chars = chars[chars.index(after: close)...]
                continue
            }
            literal.append(contentsOf: String(c).utf8)
            chars = chars.dropFirst()
        }
        if !literal.isEmpty { pieces.append(.text(literal)) }
        return pieces
    }

    static func placeholder(_ spec: String) throws -> Piece {
        switch spec {
        case "seq": return .seq
        case "seqhex": return .seqhex
        case "conn": return .conn
        default: break
        }
        if spec.hasPrefix("rand:") {
            let range = spec.dropFirst(5)
            if let dash = range.firstIndex(of: "-"), let a = Int(range[..<dash]), let b = Int(range[range.index(after: dash)...]), a <= b,
               !b.subtractingReportingOverflow(a).overflow, b - a < Int.max {
                return .rand(a, b)
            }
            if let n = Int(range), n > 0 { return .rand(0, n - 1) }
        }
        if spec.hasPrefix("pick:") {
            return .pick(spec.dropFirst(5).split(separator: "|", omittingEmptySubsequences: false).map { Array($0.utf8) })
        }
        throw BenchError("unknown placeholder {\(spec)} in the mix")
    }

    /// Appends the request for `sequence` (ending with its empty line) to `out`.
    func expand(sequence: UInt64, connection: Int, rng: inout SplitMix, into out: inout [UInt8]) {
        for piece in blocks[Int(sequence % UInt64(blocks.count))] {
            switch piece {
            case .text(let bytes): out.append(contentsOf: bytes)
            case .rand(let a, let b): out.append(contentsOf: String(a + Int(rng.next() % UInt64(b - a + 1))).utf8)
            case .pick(let options): out.append(contentsOf: options[Int(rng.next() % UInt64(options.count))])
            case .seq: out.append(contentsOf: String(sequence).utf8)
            case .seqhex: out.append(contentsOf: String(sequence, radix: 16, uppercase: true).utf8)
            case .conn: out.append(contentsOf: String(connection).utf8)
            }
        }
        out.append(UInt8(ascii: "\n"))
    }

    /// A mix for the checks' common case: RCPT requests as Postfix 3.7 sends them.
    static let builtinRcpt = """
    request=smtpd_access_policy
    protocol_state=RCPT
    protocol_name=ESMTP
    client_address=192.0.2.{rand:1-254}
    client_name=mail{rand:1-500}.example.net
    reverse_client_name=mail{rand:1-500}.example.net
    helo_name=mail{rand:1-500}.example.net
    sender=user{rand:1-100000}@example.net
    recipient=user{rand:1-1000}@example.com
    recipient_count=0
    queue_id=
    instance={seqhex}.{conn}.0
    size=0
    sasl_method=
    sasl_username=
    """
}

/// A small fast generator; the benchmark needs speed, not quality.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
