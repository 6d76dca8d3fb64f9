// The words of RFC 7208: the seven results and the two identities. Plain values with no
// dependencies, shared by the check, the wire format and the workers.

/// RFC 7208 §2.6 results.
public enum SPFResult: String, Sendable, CaseIterable, Equatable {
    case pass, fail, softfail, neutral, none, permerror, temperror

    /// The result's position in `allCases`, for tables indexed by result.
    public var index: Int {
        switch self {
        case .pass: 0
        case .fail: 1
        case .softfail: 2
        case .neutral: 3
        case .none: 4
        case .permerror: 5
        case .temperror: 6
        }
    }

    /// The result word as a literal (cheaper to append than `rawValue`).
    public var word: StaticString {
        switch self {
        case .pass: "pass"
        case .fail: "fail"
        case .softfail: "softfail"
        case .neutral: "neutral"
        case .none: "none"
        case .permerror: "permerror"
        case .temperror: "temperror"
        }
    }
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
public enum SPFIdentity: String, Sendable, Equatable {
    case mailfrom, helo
}
