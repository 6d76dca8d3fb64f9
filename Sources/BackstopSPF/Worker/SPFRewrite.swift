// The record text libspf2 compiles, written for one client from a record the grammar
// already accepted. The result libspf2 reaches is the one RFC 7208 gives for the record
// as published, and the DNS lookups it makes are the same ones:
//   - every domain-spec is expanded by Backstop (SPFMacro) and replaced by a short alias,
//     so libspf2 never expands a macro and no name is too long for it;
//   - an ip4/ip6 term that cannot match this client is dropped (it costs no lookup and
//     matches nothing), one that matches is written as "all" with its qualifier, and terms
//     after it are dropped (unreachable);
//   - terms after the eleventh DNS-lookup term are dropped (reaching them exceeds the
//     limit at that term already), and so is redirect= then, or when an "all" is present;
//   - dual CIDR lengths become the one for the client's family; /0 on a or mx becomes an
//     "any address" alias; unknown modifiers are dropped.
// libspf2 stops compiling a record past 511 octets of compiled mechanisms and still says
// success; the compiled count is compared, and a record that does not fit whole is handed
// over as a chain of shorter records joined by redirects that cost no lookup.

#if canImport(BackstopCore)  // the fuzzers compile these files without the package
import BackstopCore
#endif

extension SPFRun {
    /// The terms of `record` (fetched for `domain`) for libspf2, and the trailing ones.
    struct Rewritten {
        var terms: [String] = []
        /// exp= and redirect=, written into the last record of a chain.
        var exp: String?
        var redirect: String?

        var text: [UInt8] { Array((["v=spf1"] + terms + [exp, redirect].compactMap { $0 }).joined(separator: " ").utf8) }
        /// Mechanisms libspf2 must compile (it counts redirect as one).
        var mechanisms: Int { terms.count + (redirect == nil ? 0 : 1) }
    }

    func rewrite(_ record: SPFRecord, domain: [UInt8]) -> Rewritten {
        let context = macroContext(domain: domain, uses: record.macros)
        var out = Rewritten()
        var lookupTerms = 0
        var ended = false
        for d in record.directives {
            let q = d.qualifier == UInt8(ascii: "+") ? "" : String(UnicodeScalar(d.qualifier))
            let spec = d.domainSpec.map { record.source[$0] }
            switch d.mechanism {
            case .ip4, .ip6:
                guard SPFRun.matches(d, client) else { continue }
                out.terms.append(q + "all")
                ended = true
            case .all:
                out.terms.append(q + "all")
                ended = true
            case .a, .mx:
                let name = expandName(spec, domain: domain, context: context)
                let cidr = client.isV4 ? d.cidr4 : d.cidr6
                let mechanism = d.mechanism == .a ? "a" : "mx"
                if cidr == 0 {
                    out.terms.append(q + mechanism + ":" + alias(name, anyAddress: true))
                } else {
                    let suffix = cidr.map { client.isV4 ? "/\($0)" : "//\($0)" } ?? ""
                    out.terms.append(q + mechanism + ":" + alias(name) + suffix)
                }
            case .ptr:
                // Compared with the client's validated names, not asked: written literally
                // when it can be; a name no host name can equal matches nothing.
                let target = expandName(spec, domain: domain, context: context)?.plainText ?? "unmatched.invalid"
                out.terms.append(q + "ptr:" + target)
            case .include, .exists:
                out.terms.append(q + (d.mechanism == .include ? "include:" : "exists:")
                                 + alias(expandName(spec, domain: domain, context: context)))
            }
            if ended { break }
            if d.mechanism.looksUp {
                lookupTerms += 1
                if lookupTerms > 10 { ended = true; break }
            }
        }
        if let exp = record.exp {
            out.exp = "exp=" + alias(expandName(record.source[exp], domain: domain, context: context), owner: domain)
        }
        if !ended, let redirect = record.redirect, !record.hasAll {
            out.redirect = "redirect=" + alias(expandName(record.source[redirect], domain: domain, context: context))
        }
        return out
    }

    /// The record texts to compile: one, or a chain when the whole does not fit libspf2's
    /// compiled size. `fits` compiles a text and says whether every mechanism made it.
    func chain(_ rewritten: Rewritten, fits: ([UInt8], Int) -> Bool) -> [UInt8] {
        if fits(rewritten.text, rewritten.mechanisms) { return rewritten.text }
        // Split the terms in halves until each part compiles whole; each part but the last
        // ends in a redirect to the next (a chunk alias, not counted as a lookup).
        var parts: [[String]] = [rewritten.terms]
        var index = 0
        while index < parts.count {
            let part = parts[index]
            let isLast = index == parts.count - 1
            var probe = Rewritten(terms: part, exp: rewritten.exp, redirect: isLast ? rewritten.redirect : "redirect=c0.invalid")
            if part.count > 1 && !fits(probe.text, probe.mechanisms) {
                let half = part.count / 2
                parts.replaceSubrange(index...index, with: [Array(part[..<half]), Array(part[half...])])
                continue
            }
            probe.redirect = nil
            index += 1
        }
        // Chunk k (k ≥ 1) is served as "c<k-1>.invalid"; the first is returned.
        let first = chunks.count
        var texts: [[UInt8]] = []
        for (k, part) in parts.enumerated() {
            let isLast = k == parts.count - 1
            let next = isLast ? rewritten.redirect : "redirect=" + chunkName(first + k)
            texts.append(Rewritten(terms: part, exp: rewritten.exp, redirect: next).text)
        }
        chunks += texts.dropFirst()
        return texts[0]
    }

    /// Whether an ip4/ip6 term covers the client.
    static func matches(_ d: SPFRecord.Directive, _ client: IPAddress) -> Bool {
        switch (d.mechanism, client) {
        case (.ip4, .v4(let address)):
            guard case .v4(let network)? = d.network else { return false }
            let prefix = Int(d.cidr4 ?? 32)
            guard prefix > 0 else { return true }
            let mask = prefix >= 32 ? UInt32.max : ~(UInt32.max >> UInt32(prefix))
            return address & mask == network & mask
        case (.ip6, .v6):
            guard let network = d.network, !network.isV4 else { return false }
            let prefix = Int(d.cidr6 ?? 128)
            return client.masked(to: prefix) == network.masked(to: prefix)
        default:
            return false
        }
    }
}
