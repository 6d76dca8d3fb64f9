// Incremental, bounded parser for the policy-delegation protocol: name=value lines ended
// by an empty line. Bytes may arrive split anywhere or several requests at once; the
// parser never holds more than `maxRequestBytes` and throws at the first violation.
// It does not decide anything about the values beyond the mandatory `request=` line.

import Foundation

public struct RequestParser: Sendable {
    public let limits: ProtocolLimits
    private var pending: [UInt8] = []
    /// Where the current line begins among the request's octets.
    private var lineStart = 0
    /// For each known attribute (PolicyRequest's table), where its value starts and ends
    /// among the request's octets, -1 while the request has not carried it; filled as each
    /// line ends (the last occurrence of a name wins). Inline: a line's attribute costs two
    /// stores, no array bookkeeping.
    private var known = RequestParser.emptyKnown
    /// Attribute lines of the request so far.
    private var lines = 0

    /// The known table: two offsets per Attribute case (AttributeTests checks the size).
    typealias KnownTable = InlineArray<50, Int32>
    public static let knownSlots = KnownTable.count
    private static let emptyKnown = KnownTable(repeating: -1)

    public init(limits: ProtocolLimits = .defaults) {
        self.limits = limits
    }

    /// True when no part of a request is buffered (the connection is between requests).
    public var isIdle: Bool { pending.isEmpty }

    /// Octets of the unfinished request currently held.
    public var bufferedBytes: Int { pending.count }

    /// Consumes `input`, calling `emit` for every request it completes, in order.
    /// After a thrown error the parser's state is undefined: close the connection.
    ///
    /// Lines are read where they arrived; the octets of a request are copied into the
    /// request's buffer once, when it ends or the input does (not line by line). Offsets are
    /// those the octets will have in that buffer. The limits are checked before anything
    /// is copied, as if every line so far had been. (Offsets and counts stay far below
    /// Int.max: max_request_bytes is at most 16 MiB; hence the wrapping arithmetic.)
    public mutating func feed(
        _ input: UnsafeRawBufferPointer,
        allowMissingRequest: Bool = false,
        emit: (PolicyRequest) throws -> Void
    ) throws {
        guard let base = input.baseAddress else { return }
        let count = input.count
        let maxLine = limits.maxLineLength, maxRequest = limits.maxRequestBytes
        var offset = 0
        var copied = 0  // input[..<copied] is in `pending`
        while offset < count {
            let found = memchr(base + offset, Int32(UInt8(ascii: "\n")), count &- offset)
            let segmentEnd = found.map { base.distance(to: UnsafeRawPointer($0)) } ?? count
            let segmentLength = segmentEnd &- offset
            let held = pending.count &+ (offset &- copied)
            // Bound memory before copying anything.
            if held &- lineStart &+ segmentLength > maxLine &+ 1 {
                throw ProtocolError.lineTooLong(limit: maxLine)
            }
            if held &+ segmentLength &+ 1 > maxRequest {
                throw ProtocolError.requestTooLarge(limit: maxRequest)
            }
            guard found != nil else { break }
            let blank: Bool
            if lineStart < pending.count {
                // The line began in an earlier read: complete it in the buffer.
                append(base, from: copied, to: segmentEnd &+ 1)
                copied = segmentEnd &+ 1
                let line = Array(pending[lineStart..<(pending.count &- 1)])
                blank = try line.withUnsafeBytes { try endLine($0) }
            } else {
                blank = try endLine(UnsafeRawBufferPointer(start: base + offset, count: segmentLength))
            }
            offset = segmentEnd &+ 1
            lineStart = held &+ segmentLength &+ 1
            if blank {
                append(base, from: copied, to: offset)
                copied = offset
                try emit(finishRequest(allowMissingRequest: allowMissingRequest))
            }
        }
        append(base, from: copied, to: count)
    }

    private mutating func append(_ base: UnsafeRawPointer, from start: Int, to end: Int) {
        guard end > start else { return }
        // The request's buffer also takes its known table when it ends: room for it from the
        // start, so a request that arrives in one read is copied once.
        if pending.isEmpty { pending.reserveCapacity(end &- start &+ PolicyRequest.tableBytes) }
        pending.append(contentsOf: UnsafeRawBufferPointer(start: base + start, count: end &- start))
    }

    /// Handles one line (without its newline) that starts at `lineStart` in the request's
    /// buffer; true when it is the empty line that ends the request. A known attribute's
    /// value is entered in the table here, while the line's octets are at hand.
    @inline(__always)
    private mutating func endLine(_ line: UnsafeRawBufferPointer) throws -> Bool {
        var length = line.count
        // Be lenient with CRLF from hand-typed sessions: the CR is not part of the value.
        if length > 0, line[length &- 1] == UInt8(ascii: "\r") { length &-= 1 }
        if length > limits.maxLineLength {
            throw ProtocolError.lineTooLong(limit: limits.maxLineLength)
        }
        if length == 0 { return true }
        let start = line.baseAddress!
        guard let hit = memchr(start, Int32(UInt8(ascii: "=")), length) else {
            throw ProtocolError.missingEquals(line: lines &+ 1)
        }
        let nameLength = start.distance(to: UnsafeRawPointer(hit))
        guard nameLength > 0 else { throw ProtocolError.emptyName(line: lines &+ 1) }
        guard lines < limits.maxAttributes else {
            throw ProtocolError.tooManyAttributes(limit: limits.maxAttributes)
        }
        if let attribute = Attribute.lookup(UnsafeRawBufferPointer(start: start, count: nameLength)) {
            known[attribute.rawValue &* 2] = Int32(truncatingIfNeeded: lineStart &+ nameLength &+ 1)
            known[attribute.rawValue &* 2 &+ 1] = Int32(truncatingIfNeeded: lineStart &+ length)
        }
        lines &+= 1
        return false
    }

    private mutating func finishRequest(allowMissingRequest: Bool) throws -> PolicyRequest {
        let requestIndex = Attribute.request.rawValue * 2
        if known[requestIndex] < 0 {
            if !allowMissingRequest { throw ProtocolError.missingRequestAttribute }
        } else {
            let start = Int(known[requestIndex]), end = Int(known[requestIndex + 1])
            let expected: StaticString = "smtpd_access_policy"
            let same = end - start == expected.utf8CodeUnitCount && pending.withUnsafeBytes {
                memcmp($0.baseAddress! + start, expected.utf8Start, end - start) == 0
            }
            if !same {
                throw ProtocolError.unsupportedRequest(String(decoding: pending[start..<end], as: UTF8.self))
            }
        }
        // The table goes after the octets in one copy (element by element, each read copied
        // the whole table).
        withUnsafeBytes(of: &known) { pending.append(contentsOf: $0) }
        let request = PolicyRequest(bytes: pending)
        pending = []
        lineStart = 0
        known = Self.emptyKnown
        lines = 0
        return request
    }
}
