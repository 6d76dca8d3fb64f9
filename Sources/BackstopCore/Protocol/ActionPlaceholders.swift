// `{name}` placeholders in the text of a configured action ("550 5.7.23 {domain} does not
// allow {client}"), filled in when a check answers. One pass over the octets; a value is
// asked for only when its placeholder appears, and what it inserts is not scanned again
// (a value holding "{x}" stays as it is). A name the lookup does not know stays as written.
// The checks say which names they know; this neither escapes nor bounds the values.

import Glibc

extension PolicyAction {
    /// The same action with the placeholders of its text filled by `value`.
    public func filled(_ value: (String) -> String?) -> PolicyAction {
        switch self {
        case .reject(let t): .reject(t.map { PolicyAction.fill($0, value) })
        case .deferTemporarily(let t): .deferTemporarily(t.map { PolicyAction.fill($0, value) })
        case .deferIfPermit(let t): .deferIfPermit(t.map { PolicyAction.fill($0, value) })
        case .deferIfReject(let t): .deferIfReject(t.map { PolicyAction.fill($0, value) })
        case .reply(let code, let enhanced, let text): .reply(code: code, enhanced: enhanced, text: PolicyAction.fill(text, value))
        case .prepend(let t): .prepend(PolicyAction.fill(t, value))
        case .warn(let t): .warn(PolicyAction.fill(t, value))
        case .info(let t): .info(PolicyAction.fill(t, value))
        case .hold(let t): .hold(t.map { PolicyAction.fill($0, value) })
        case .discard(let t): .discard(t.map { PolicyAction.fill($0, value) })
        case .dunno, .ok: self
        }
    }

    /// `text` with each `{name}` that `value` knows replaced; the text itself when it has no "{".
    /// Works on the octets: "{" and "}" are ASCII, so they never fall inside a multi-octet
    /// character, and every name handed to `value` is whole Unicode scalars. The name is a
    /// String, not a Substring: one this short is a small String (no allocation), and a
    /// small String compares with a literal word by word, where a Substring took the general
    /// comparison for each case of the caller's switch (~6,000 instructions per filled text).
    public static func fill(_ text: String, _ value: (String) -> String?) -> String {
        Octets.with(text) { octets -> String in
            guard let base = octets.baseAddress, var open = find(UInt8(ascii: "{"), in: octets, from: 0) else { return text }
            var out: [UInt8] = []
            out.reserveCapacity(octets.count + 64)
            var copied = 0  // octets[..<copied] are in `out`
            while true {
                if let close = find(UInt8(ascii: "}"), in: octets, from: open + 1) {
                    let name = String(decoding: UnsafeRawBufferPointer(start: base + open + 1, count: close - open - 1), as: UTF8.self)
                    if let filled = value(name) {
                        out.append(contentsOf: UnsafeRawBufferPointer(start: base + copied, count: open - copied))
                        Octets.with(filled) { out.append(contentsOf: $0) }
                        copied = close + 1
                    }
                }
                // An unknown name or a lone "{" stays as written; the search goes on after the "{".
                guard let next = find(UInt8(ascii: "{"), in: octets, from: max(open + 1, copied)) else { break }
                open = next
            }
            out.append(contentsOf: UnsafeRawBufferPointer(start: base + copied, count: octets.count - copied))
            return String(decoding: out, as: UTF8.self)
        }
    }

    /// The offset of the first `octet` at or after `start`, or nil.
    private static func find(_ octet: UInt8, in octets: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard start < octets.count, let base = octets.baseAddress,
              let hit = memchr(base + start, Int32(octet), octets.count - start) else { return nil }
        return base.distance(to: UnsafeRawPointer(hit))
    }
}
