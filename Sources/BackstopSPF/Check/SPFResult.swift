// The words of RFC 7208: the seven results and the two identities. Plain values with no
// dependencies, shared by the check, the wire format and the workers.

/// RFC 7208 §2.6 results.
public enum SPFResult: String, Sendable, CaseIterable, Equatable {
    case pass, fail, softfail, neutral, none, permerror, temperror
}

/// Which identity was checked (RFC 7208 §2.3, §2.4).
public enum SPFIdentity: String, Sendable, Equatable {
    case mailfrom, helo
}
