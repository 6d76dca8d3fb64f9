// `{name}` placeholders in the text of a configured action ("550 5.7.23 {domain} does not
// allow {client}"), filled in when a check answers. One pass over the octets; a value is
// asked for only when its placeholder appears, and what it inserts is not scanned again
// (a value holding "{x}" stays as it is). A name the lookup does not know stays as written.
// The checks say which names they know; this neither escapes nor bounds the values.

extension PolicyAction {
    /// The same action with the placeholders of its text filled by `value`.
    public func filled(_ value: (Substring) -> String?) -> PolicyAction {
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
    /// character, and every name handed to `value` is a slice of `text` on Unicode scalar boundaries.
    public static func fill(_ text: String, _ value: (Substring) -> String?) -> String {
        Octets.with(text) { octets -> String in
            guard var open = octets.firstIndex(of: UInt8(ascii: "{")) else { return text }
            let utf8 = text.utf8
            var out: [UInt8] = []
            out.reserveCapacity(octets.count + 64)
            var copied = 0  // octets[..<copied] are in `out`
            while true {
                if let close = octets[(open + 1)...].firstIndex(of: UInt8(ascii: "}")) {
                    let name = text[utf8.index(utf8.startIndex, offsetBy: open + 1)..<utf8.index(utf8.startIndex, offsetBy: close)]
                    if let filled = value(name) {
                        out.append(contentsOf: octets[copied..<open])
                        Octets.with(filled) { out.append(contentsOf: $0) }
                        copied = close + 1
                    }
                }
                // An unknown name or a lone "{" stays as written; the search goes on after the "{".
                guard let next = octets[max(open + 1, copied)...].firstIndex(of: UInt8(ascii: "{")) else { break }
                open = next
            }
            out.append(contentsOf: octets[copied...])
            return String(decoding: out, as: UTF8.self)
        }
    }
}
