// Incremental, bounded parser for the policy-delegation protocol: name=value lines ended
// by an empty line. Bytes may arrive split anywhere or several requests at once; the
// parser never holds more than `maxRequestBytes` and throws at the first violation.
// It does not decide anything about the values beyond the mandatory `request=` line.

import Foundation

public struct RequestParser: Sendable {
    public let limits: ProtocolLimits
    private var pending: [UInt8] = []
    private var lineStart = 0
    private var known: [Int32]
    private var all: [(Int32, Int32, Int32)] = []

    public init(limits: ProtocolLimits = .defaults) {
        self.limits = limits
        self.known = [Int32](repeating: -1, count: Attribute.allCases.count * 2)
    }

    /// True when no part of a request is buffered (the connection is between requests).
    public var isIdle: Bool { pending.isEmpty }

    /// Octets of the unfinished request currently held.
    public var bufferedBytes: Int { pending.count }

    /// Consumes `input`, calling `emit` for every request it completes, in order.
    /// After a thrown error the parser's state is undefined: close the connection.
    public mutating func feed(
        _ input: UnsafeRawBufferPointer,
        allowMissingRequest: Bool = false,
        emit: (PolicyRequest) throws -> Void
    ) throws {
        var offset = 0
        let count = input.count
        guard let base = input.baseAddress else { return }
        while offset < count {
            let remaining = count - offset
            let found = memchr(base + offset, Int32(UInt8(ascii: "\n")), remaining)
            let segmentEnd = found.map { base.distance(to: UnsafeRawPointer($0)) } ?? count
            let segmentLength = segmentEnd - offset
            // Bound memory before copying anything.
            if pending.count - lineStart + segmentLength > limits.maxLineLength + 1 {
                throw ProtocolError.lineTooLong(limit: limits.maxLineLength)
            }
            if pending.count + segmentLength + 1 > limits.maxRequestBytes {
                throw ProtocolError.requestTooLarge(limit: limits.maxRequestBytes)
            }
            if pending.isEmpty { pending.reserveCapacity(min(limits.maxRequestBytes, 1024)) }
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[offset..<segmentEnd]))
            offset = segmentEnd
            guard found != nil else { break }
            offset += 1  // the newline
            pending.append(UInt8(ascii: "\n"))
            if let request = try endLine(allowMissingRequest: allowMissingRequest) {
                try emit(request)
            }
        }
        if pending.count - lineStart > limits.maxLineLength + 1 {
            throw ProtocolError.lineTooLong(limit: limits.maxLineLength)
        }
    }

    /// Handles the line that ends just before the newline at the end of `pending`.
    private mutating func endLine(allowMissingRequest: Bool) throws -> PolicyRequest? {
        var lineEnd = pending.count - 1
        // Be lenient with CRLF from hand-typed sessions: the CR is not part of the value.
        if lineEnd > lineStart, pending[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
        if lineEnd - lineStart > limits.maxLineLength {
            throw ProtocolError.lineTooLong(limit: limits.maxLineLength)
        }
        if lineEnd == lineStart {
            return try finishRequest(allowMissingRequest: allowMissingRequest)
        }
        let lineNumber = all.count + 1
        // One pass over the buffer: memchr finds the '=', the name is looked up in place.
        let (equals, attribute): (Int, Attribute?) = pending.withUnsafeBytes { raw in
            let base = raw.baseAddress!
            guard let hit = memchr(base + lineStart, Int32(UInt8(ascii: "=")), lineEnd - lineStart) else {
                return (-1, nil)
            }
            let equals = base.distance(to: UnsafeRawPointer(hit))
            return (equals, Attribute.lookup(UnsafeRawBufferPointer(start: base + lineStart, count: equals - lineStart)))
        }
        guard equals >= 0 else { throw ProtocolError.missingEquals(line: lineNumber) }
        guard equals > lineStart else { throw ProtocolError.emptyName(line: lineNumber) }
        guard all.count < limits.maxAttributes else {
            throw ProtocolError.tooManyAttributes(limit: limits.maxAttributes)
        }
        all.append((Int32(lineStart), Int32(equals), Int32(lineEnd)))
        if let attribute {
            // The last occurrence of a duplicated name wins.
            known[attribute.rawValue * 2] = Int32(equals + 1)
            known[attribute.rawValue * 2 + 1] = Int32(lineEnd)
        }
        lineStart = pending.count
        return nil
    }

    private mutating func finishRequest(allowMissingRequest: Bool) throws -> PolicyRequest {
        let requestIndex = Attribute.request.rawValue * 2
        if known[requestIndex] < 0 {
            if !allowMissingRequest { throw ProtocolError.missingRequestAttribute }
        } else {
            let start = Int(known[requestIndex]), end = Int(known[requestIndex + 1])
            let expected = "smtpd_access_policy".utf8
            if !pending[start..<end].elementsEqual(expected) {
                throw ProtocolError.unsupportedRequest(String(decoding: pending[start..<end], as: UTF8.self))
            }
        }
        let request = PolicyRequest(storage: pending, known: known, all: all)
        pending = []
        lineStart = 0
        all = []
        all.reserveCapacity(32)
        for index in known.indices { known[index] = -1 }
        return request
    }
}
