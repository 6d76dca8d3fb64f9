// Incremental, bounded parser for the policy-delegation protocol: name=value lines ended
// by an empty line. Bytes may arrive split anywhere or several requests at once; the
// parser never holds more than `maxRequestBytes` and throws at the first violation.
// It does not decide anything about the values beyond the mandatory `request=` line.

import Foundation

public struct RequestParser: Sendable {
    public let limits: ProtocolLimits
    private var pending: [UInt8] = []
    private var lineStart = 0
    /// The request's index as PolicyRequest keeps it: the known table's slots (filled when
    /// the request ends), then three offsets per attribute line.
    private var index = RequestParser.emptyIndex()
    /// Attribute lines of the request so far.
    private var lines = 0

    public init(limits: ProtocolLimits = .defaults) {
        self.limits = limits
    }

    /// An index with the known table's slots empty (-1) and room for 32 attribute lines.
    private static func emptyIndex() -> [Int32] {
        var index: [Int32] = []
        index.reserveCapacity(PolicyRequest.knownSlots + 3 * 32)
        index.append(contentsOf: repeatElement(-1, count: PolicyRequest.knownSlots))
        return index
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
    /// is copied, as if every line so far had been.
    public mutating func feed(
        _ input: UnsafeRawBufferPointer,
        allowMissingRequest: Bool = false,
        emit: (PolicyRequest) throws -> Void
    ) throws {
        guard let base = input.baseAddress else { return }
        let count = input.count
        var offset = 0
        var copied = 0  // input[..<copied] is in `pending`
        while offset < count {
            let found = memchr(base + offset, Int32(UInt8(ascii: "\n")), count - offset)
            let segmentEnd = found.map { base.distance(to: UnsafeRawPointer($0)) } ?? count
            let segmentLength = segmentEnd - offset
            let held = pending.count + (offset - copied)
            // Bound memory before copying anything.
            if held - lineStart + segmentLength > limits.maxLineLength + 1 {
                throw ProtocolError.lineTooLong(limit: limits.maxLineLength)
            }
            if held + segmentLength + 1 > limits.maxRequestBytes {
                throw ProtocolError.requestTooLarge(limit: limits.maxRequestBytes)
            }
            guard found != nil else { break }
            let blank: Bool
            if lineStart < pending.count {
                // The line began in an earlier read: complete it in the buffer.
                append(base, from: copied, to: segmentEnd + 1)
                copied = segmentEnd + 1
                let line = Array(pending[lineStart..<(pending.count - 1)])
                blank = try line.withUnsafeBytes { try endLine($0) }
            } else {
                blank = try endLine(UnsafeRawBufferPointer(start: base + offset, count: segmentLength))
            }
            offset = segmentEnd + 1
            lineStart = held + segmentLength + 1
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
        pending.append(contentsOf: UnsafeRawBufferPointer(start: base + start, count: end - start))
    }

    /// Handles one line (without its newline) that starts at `lineStart` in the request's
    /// buffer; true when it is the empty line that ends the request.
    @inline(__always)
    private mutating func endLine(_ line: UnsafeRawBufferPointer) throws -> Bool {
        var length = line.count
        // Be lenient with CRLF from hand-typed sessions: the CR is not part of the value.
        if length > 0, line[length - 1] == UInt8(ascii: "\r") { length -= 1 }
        if length > limits.maxLineLength {
            throw ProtocolError.lineTooLong(limit: limits.maxLineLength)
        }
        if length == 0 { return true }
        let lineNumber = lines + 1
        guard let hit = memchr(line.baseAddress!, Int32(UInt8(ascii: "=")), length) else {
            throw ProtocolError.missingEquals(line: lineNumber)
        }
        let nameLength = line.baseAddress!.distance(to: UnsafeRawPointer(hit))
        guard nameLength > 0 else { throw ProtocolError.emptyName(line: lineNumber) }
        guard lines < limits.maxAttributes else {
            throw ProtocolError.tooManyAttributes(limit: limits.maxAttributes)
        }
        // Names are looked up when the request ends (`fillKnown`), in one pass.
        index.append(Int32(lineStart))
        index.append(Int32(lineStart + nameLength))
        index.append(Int32(lineStart + length))
        lines += 1
        return false
    }

    /// Fills the known table at the front of `index`: for each known attribute, where its
    /// value starts and ends in `pending` (left -1 when the request lacks it); the last
    /// occurrence of a duplicated name wins.
    private mutating func fillKnown() {
        let knownSlots = PolicyRequest.knownSlots
        pending.withUnsafeBytes { raw in
            index.withUnsafeMutableBufferPointer { slots in
                var line = knownSlots
                while line < slots.count {
                    let nameStart = Int(slots[line]), equals = slots[line + 1], valueEnd = slots[line + 2]
                    line += 3
                    let name = UnsafeRawBufferPointer(rebasing: raw[nameStart..<Int(equals)])
                    guard let attribute = Attribute.lookup(name) else { continue }
                    slots[attribute.rawValue * 2] = equals + 1
                    slots[attribute.rawValue * 2 + 1] = valueEnd
                }
            }
        }
    }

    private mutating func finishRequest(allowMissingRequest: Bool) throws -> PolicyRequest {
        fillKnown()
        let requestIndex = Attribute.request.rawValue * 2
        if index[requestIndex] < 0 {
            if !allowMissingRequest { throw ProtocolError.missingRequestAttribute }
        } else {
            let start = Int(index[requestIndex]), end = Int(index[requestIndex + 1])
            let expected: StaticString = "smtpd_access_policy"
            let same = end - start == expected.utf8CodeUnitCount && pending.withUnsafeBytes {
                memcmp($0.baseAddress! + start, expected.utf8Start, end - start) == 0
            }
            if !same {
                throw ProtocolError.unsupportedRequest(String(decoding: pending[start..<end], as: UTF8.self))
            }
        }
        let request = PolicyRequest(storage: pending, index: index)
        pending = []
        lineStart = 0
        index = RequestParser.emptyIndex()
        lines = 0
        return request
    }
}
