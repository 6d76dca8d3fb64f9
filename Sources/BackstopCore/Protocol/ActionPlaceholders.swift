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
    public static func fill(_ text: String, _ value: (Substring) -> String?) -> String {
        guard text.utf8.contains(UInt8(ascii: "{")) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 64)
        var rest = Substring(text)
        while let open = rest.utf8.firstIndex(of: UInt8(ascii: "{")) {
            out += rest[..<open]
            let afterOpen = rest.utf8.index(after: open)
            if let close = rest.utf8[afterOpen...].firstIndex(of: UInt8(ascii: "}")),
               let filled = value(rest[afterOpen..<close]) {
                out += filled
                rest = rest[rest.utf8.index(after: close)...]
            } else {
                out += "{"
                rest = rest[afterOpen...]
            }
        }
        out += rest
        return out
    }
}
