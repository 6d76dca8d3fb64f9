// The access(5) actions a policy server may answer with, and parsing of the same words
// as an administrator writes them in the configuration ("550 5.1.1 User unknown",
// "DEFER_IF_PERMIT Try later", "DUNNO"). Encoding for the wire lives in ResponseEncoder.

public enum PolicyAction: Sendable, Equatable, CustomStringConvertible {
    case dunno
    case ok
    case reject(String?)
    case deferTemporarily(String?)
    case deferIfPermit(String?)
    case deferIfReject(String?)
    /// An explicit SMTP reply: `code` is 4NN or 5NN, `enhanced` an RFC 3463 status such as 5.1.1.
    /// Indirect: its payload is the largest by far, and every action, verdict and decision
    /// copied on the request path was as large as it (the boxed one is made once per
    /// configured action, or when its text's placeholders are filled).
    indirect case reply(code: Int, enhanced: String?, text: String)
    case prepend(String)
    case warn(String)
    case info(String)
    case hold(String?)
    case discard(String?)

    /// No opinion: the engine moves on to the next check.
    public var isNoOpinion: Bool { self == .dunno }

    /// Whether the mail does not go on as sent: refused, deferred, held or discarded. Test
    /// mode turns these into WARN; an accept (OK, DUNNO) and PREPEND, WARN, INFO pass.
    public var withholdsMail: Bool {
        switch self {
        case .reject, .deferTemporarily, .deferIfPermit, .deferIfReject, .reply, .hold, .discard: true
        case .dunno, .ok, .prepend, .warn, .info: false
        }
    }

    /// Refusals (permanent or temporary).
    public var isRefusal: Bool {
        switch self {
        case .reject, .deferTemporarily, .deferIfPermit, .deferIfReject, .reply: true
        default: false
        }
    }

    /// A temporary refusal (4xx): the sender retries later.
    /// DEFER_IF_REJECT: Postfix defers only when a later restriction rejects, and otherwise
    /// lets the mail through. An answer that must refuse (an unknown recipient, a forged
    /// bounce, a broken table) cannot be this.
    public var refusesOnlyIfLaterRejects: Bool {
        if case .deferIfReject = self { return true }
        return false
    }

    public var isTemporary: Bool {
        switch self {
        case .deferTemporarily, .deferIfPermit, .deferIfReject: true
        case .reply(let code, _, _): code < 500
        default: false
        }
    }

    /// The keyword as Postfix reads it (`REJECT`, `DEFER_IF_PERMIT`, `550`, …).
    public var keyword: String {
        switch self {
        case .dunno: "DUNNO"
        case .ok: "OK"
        case .reject: "REJECT"
        case .deferTemporarily: "DEFER"
        case .deferIfPermit: "DEFER_IF_PERMIT"
        case .deferIfReject: "DEFER_IF_REJECT"
        case .reply(let code, _, _): String(code)
        case .prepend: "PREPEND"
        case .warn: "WARN"
        case .info: "INFO"
        case .hold: "HOLD"
        case .discard: "DISCARD"
        }
    }

    /// The text after the keyword, if any (for `.reply`, the enhanced code and text).
    public var text: String? {
        switch self {
        case .dunno, .ok: nil
        case .reject(let t), .deferTemporarily(let t), .deferIfPermit(let t), .deferIfReject(let t),
             .hold(let t), .discard(let t): t
        case .reply(_, let enhanced, let text): enhanced.map { "\($0) \(text)" } ?? text
        case .prepend(let t), .warn(let t), .info(let t): t
        }
    }

    /// Exactly what goes after `action=` on the wire, sanitised and cut to SMTP's limits.
    public var description: String { ResponseEncoder.actionText(self) }
}

extension PolicyAction {
    /// Whether `text` starts like a header line (RFC 5322 §2.2: a field name of printable
    /// ASCII other than ":", then ":"; blanks before the colon are tolerated, as Postfix does).
    static func isHeaderLine(_ text: String) -> Bool {
        var sawName = false, sawBlank = false
        for octet in text.utf8 {
            switch octet {
            case UInt8(ascii: ":"): return sawName
            case UInt8(ascii: " "), UInt8(ascii: "\t"): guard sawName else { return false }; sawBlank = true
            case 33...126: guard !sawBlank else { return false }; sawName = true
            default: return false
            }
        }
        return false
    }
}

public struct ActionParseError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

extension PolicyAction {
    /// Parses an action as written in the configuration or by the `query` command.
    public init(parsing input: String) throws {
        let trimmed = input.trimmingSpaces
        guard !trimmed.isEmpty else { throw ActionParseError(description: "empty action") }
        // The word ends at a space or a tab: a table line is written "key<TAB>REJECT<TAB>text" too.
        let parts = trimmed.split(maxSplits: 1, omittingEmptySubsequences: true) { $0 == " " || $0 == "\t" }
        let word = String(parts[0])
        let rest = parts.count > 1 ? String(parts[1]).trimmingSpaces : nil
        let text = (rest?.isEmpty ?? true) ? nil : rest
        func requireText(_ what: String) throws -> String {
            guard let text else { throw ActionParseError(description: "\(what) needs a text after it") }
            return text
        }
        switch word.uppercased() {
        case "DUNNO": self = .dunno
        case "OK": self = .ok
        case "REJECT": self = .reject(text)
        case "DEFER": self = .deferTemporarily(text)
        case "DEFER_IF_PERMIT": self = .deferIfPermit(text)
        case "DEFER_IF_REJECT": self = .deferIfReject(text)
        case "PREPEND":
            let header = try requireText("PREPEND")
            // Postfix ignores a PREPEND whose text is not a header (it logs "requires header").
            guard PolicyAction.isHeaderLine(header) else {
                throw ActionParseError(description:
                    "PREPEND needs a header line \"Name: value\" (a name of printable ASCII without spaces, then \":\"), not \"\(LogEscaping.escape(header, limit: 60))\"")
            }
            self = .prepend(header)
        case "WARN": self = .warn(try requireText("WARN"))
        case "INFO": self = .info(try requireText("INFO"))
        case "HOLD": self = .hold(text)
        case "DISCARD": self = .discard(text)
        default:
            guard word.count == 3, let code = Int(word), (400...599).contains(code) else {
                throw ActionParseError(description:
                    "unknown action \"\(LogEscaping.escape(word))\": use DUNNO, OK, REJECT, DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, PREPEND, WARN, INFO, HOLD, DISCARD or a 4NN/5NN reply")
            }
            var enhanced: String?
            var body = text ?? ""
            if let text, let first = text.split(maxSplits: 1, whereSeparator: { $0 == " " || $0 == "\t" }).first,
               PolicyAction.isEnhancedStatus(first) {
                guard first.first == word.first else {
                    throw ActionParseError(description: "enhanced status \(first) does not match reply code \(code): both must start with the same digit")
                }
                enhanced = String(first)
                body = String(text.dropFirst(first.count)).trimmingSpaces
            }
            self = .reply(code: code, enhanced: enhanced, text: body)
        }
    }

    /// RFC 3463 form: class.subject.detail, class 2, 4 or 5, each part 1–3 digits.
    static func isEnhancedStatus(_ s: Substring) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let cls = parts[0].first, "245".contains(cls), parts[0].count == 1 else { return false }
        return parts[1...].allSatisfy { (1...3).contains($0.count) && $0.allSatisfy(\.isASCIIDigit) }
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isWholeNumber }
}

extension StringProtocol {
    /// The text without leading and trailing spaces and tabs.
    /// Works on octets: both are ASCII, so every cut falls on a character boundary.
    public var trimmingSpaces: String {
        var text = String(self)
        // Offsets in the string's storage, the end found from the back.
        let (start, end) = text.withUTF8 { octets -> (Int, Int) in
            var start = 0, end = octets.count
            while start < end, octets[start] == 0x20 || octets[start] == 0x09 { start += 1 }
            while end > start, octets[end - 1] == 0x20 || octets[end - 1] == 0x09 { end -= 1 }
            return (start, end)
        }
        if start == 0 && end == text.utf8.count { return text }
        return text.withUTF8 { String(decoding: UnsafeBufferPointer(rebasing: $0[start..<end]), as: UTF8.self) }
    }
}

extension String {
    /// At most `limit` octets of the text, cut at a character boundary (so still UTF-8).
    public func prefix(octets limit: Int) -> String {
        guard utf8.count > limit else { return self }
        var out = "", count = 0
        for character in self {
            let width = character.utf8.count
            if count + width > limit { break }
            out.append(character)
            count += width
        }
        return out
    }
}
