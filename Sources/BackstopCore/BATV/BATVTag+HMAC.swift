// Making and checking the signature of a BATV tag: HMAC-SHA1 from swift-crypto over
// "KDDD" + the untagged address, lowercased (so a bounce whose address changed case on the
// way still verifies) and with a domain in U-labels written in A-labels (so one that came
// back in the other form, converted by an MTA without SMTPUTF8, verifies too), of which
// the first three bytes are the tag's six hex digits. The
// tag's text form and the day arithmetic's inputs are BATVTag.swift's.

import Crypto

extension BATVTag {
    /// The six hex digits of the signature of `address` with `key`, expiring on `expiryDay`.
    public static func signature(of address: String, key: BATVKey, expiryDay: Int) -> String {
        let input = (String(key.number) + threeDigits(expiryDay) + signedForm(address)).lowercased()
        let mac = HMAC<Insecure.SHA1>.authenticationCode(for: Array(input.utf8), using: SymmetricKey(data: key.secret))
        return mac.prefix(3).map { byte in
            let hex = Array("0123456789abcdef".utf8)
            return String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]], as: UTF8.self)
        }.joined()
    }

    /// The address as the signature covers it: a domain in U-labels in its A-label form
    /// (an ASCII address as it is).
    static func signedForm(_ address: String) -> String {
        guard address.utf8.contains(where: { $0 >= 0x80 }), let (local, domain) = Octets.splitAddress(address) else {
            return address
        }
        guard domain.utf8.contains(where: { $0 >= 0x80 }), let ascii = DomainName.asciiForm(String(domain)) else { return address }
        return local + "@" + ascii
    }

    /// `address` (local@domain) with a tag made today that expires `lifetimeDays` later, or
    /// nil when it is not `signable`: the result would break the local part's length limit,
    /// or the local part is quoted (Postfix looks it up quoted but hands the policy service
    /// the unquoted form, so its tag would never verify).
    public static func sign(_ address: String, key: BATVKey, today: Int, lifetimeDays: Int) -> String? {
        guard signable(address) else { return nil }
        let expiry = (today + lifetimeDays) % 1000
        return "prvs=\(key.number)\(threeDigits(expiry))\(signature(of: address, key: key, expiryDay: expiry))=\(address)"
    }

    /// Checks the tag of `address` against `keys` on `today`.
    public static func verify(_ address: String, keys: [BATVKey], today: Int) -> BATVVerification {
        guard let tagged = parse(address) else { return .noTag }
        return verify(tagged, keys: keys, today: today)
    }

    /// Days since the tag's expiry day, by the day numbers' arithmetic mod 1000 (0 on the
    /// expiry day itself; a tag still valid reads as about a thousand).
    public static func daysSinceExpiry(_ tagged: BATVTaggedAddress, today: Int) -> Int {
        ((today % 1000 - tagged.expiryDay) % 1000 + 1000) % 1000
    }

    /// A tag is valid through its expiry day. The window ahead is the longest lifetime (and
    /// a day for clocks that disagree at midnight), not the configured one: only we can
    /// sign, and a tag made before `lifetime` was shortened is still genuine.
    public static func verify(_ tagged: BATVTaggedAddress, keys: [BATVKey], today: Int) -> BATVVerification {
        guard let key = keys.last(where: { $0.number == tagged.keyNumber }) else { return .unknownKey }
        let expected = signature(of: tagged.address, key: key, expiryDay: tagged.expiryDay)
        // Compared in full whatever the first difference, so timing says nothing.
        var difference: UInt8 = 0
        for (a, b) in zip(expected.utf8, tagged.signature.utf8) { difference |= a ^ b }
        guard difference == 0 else { return .badSignature }
        let daysLeft = ((tagged.expiryDay - today % 1000) % 1000 + 1000) % 1000
        // One day more than the longest lifetime: a tag made just after midnight by a host
        // whose clock is ahead of ours has `lifetime` + 1 days left by our calendar.
        guard daysLeft <= maxLifetimeDays + 1 else { return .expired }
        return .valid(keyNumber: key.number, daysLeft: daysLeft)
    }

}
