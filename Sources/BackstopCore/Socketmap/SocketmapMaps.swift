// The tables the socketmap listener serves, by name, answered from the checks of the
// engine in force (so a reload or a table edit is seen by the next lookup):
//   batv-sign   sender_canonical_maps: our senders, tagged
//   batv-strip  recipient_canonical_maps: valid tagged recipients that exist, untagged
//   recipients  relay_recipient_maps: the live recipient table
// "Not found" is NOTFOUND; TEMP and PERM only for real faults (a map whose check is not
// configured, a table that cannot be trusted now). This file parses nothing.

import Metrics

public enum SocketmapMaps {
    public static let names = ["batv-sign", "batv-strip", "recipients"]

    /// The answer to `request` from the checks of `engine`, and the map label to count it under.
    public static func answer(_ request: SocketmapRequest, engine: PolicyEngine) -> (SocketmapReply, map: String) {
        let key = request.key
        // A key that is not UTF-8 is in no table, and a signed or unwrapped form of it would
        // be another address (its octets replaced): not found, in every map.
        if !request.keyIsUTF8 && names.contains(request.map) { return (.notFound, request.map) }
        switch request.map {
        case "batv-sign":
            guard let batv = engine.checks["batv"] as? BATVCheck else { return (.perm("batv is not configured ([batv] section)"), request.map) }
            // Postfix asks for the null sender as the two characters "".
            if key.isEmpty || key == "\"\"" { return (.notFound, request.map) }
            return (batv.signedSender(key).map(SocketmapReply.ok) ?? .notFound, request.map)
        case "batv-strip":
            guard let batv = engine.checks["batv"] as? BATVCheck else { return (.perm("batv is not configured ([batv] section)"), request.map) }
            // Only an address the recipient table knows is unwrapped: Postfix accepts any
            // address a canonical map rewrites, so a tag on a missing mailbox must not pass.
            guard let recipients = engine.checks["recipients"] as? RecipientsCheck else {
                return (.perm("batv-strip needs the recipients check ([recipients] section)"), request.map)
            }
            // One verification: the table is asked only about a validly tagged address.
            var fault: String?
            let plain = batv.strippedRecipient(key) { address in
                switch recipients.mapAnswer(for: address) {
                case .known: return true
                case .unknown: return false
                case .fault(let why): fault = why; return false
                }
            }
            if let fault { return (.temp(fault), request.map) }
            return (plain.map(SocketmapReply.ok) ?? .notFound, request.map)
        case "recipients":
            guard let recipients = engine.checks["recipients"] as? RecipientsCheck else {
                return (.perm("the recipients check is not configured ([recipients] section)"), request.map)
            }
            // A tagged address of ours is looked up untagged. Its tag must be valid, or the
            // message would be relayed tagged and bounce, unless the batv check refuses a
            // bad tag at RCPT anyway (with its own answer, which says why).
            var lookup = key
            if let batv = engine.checks["batv"] as? BATVCheck, let tagged = batv.taggedOwnAddress(key) {
                if let plain = batv.validlyTagged(key) {
                    lookup = plain
                } else if enforcesAtRCPT(batv, engine) {
                    lookup = tagged
                } else {
                    return (.notFound, request.map)
                }
            }
            switch recipients.mapAnswer(for: lookup) {
            case .known: return (.ok(key), request.map)
            case .unknown: return (.notFound, request.map)
            case .fault(let why): return (.temp(why), request.map)
            }
        default:
            return (.perm("no map named \(LogEscaping.escape(String(request.map.prefix(64)))): Backstop serves \(names.joined(separator: ", "))"), "unknown")
        }
    }

    /// True when `batv` refuses bad tags at RCPT for real (listed at rcpt, no test mode).
    static func enforcesAtRCPT(_ batv: BATVCheck, _ engine: PolicyEngine) -> Bool {
        !engine.testMode && !batv.testMode && (engine.stages[.rcpt] ?? []).contains { ($0 as? BATVCheck) === batv }
    }

    /// Counts one answer under backstop_socketmap_requests_total{map, reply}.
    public static func count(map: String, reply: SocketmapReply) {
        Counter(label: "backstop_socketmap_requests_total", dimensions: [("map", map), ("reply", reply.status.lowercased())]).increment()
    }
}
