// After a pass: which term decided (libspf2 does not say), and the explanation of a fail.
// The term is found by walking the records the pass fetched again, in order, against the
// answers the evaluation holds: the first term that matches the client is it; a term
// whose answers are not all there is taken when its qualifier gives the result. The
// explanation is expanded by Backstop (Debian's libspf2 garbles it). No DNS, no libspf2.

import BackstopCore
import Glibc

extension SPFRun {
    /// The decisive term as written ("ip4:192.0.2.0/24", "-all"), or nil.
    func matchedMechanism(_ result: SPFResult) -> String? {
        guard let top = records.first else { return nil }
        return matchedTerm(in: top, result: result, depth: 0)
    }

    private static func qualifier(for result: SPFResult) -> UInt8? {
        switch result {
        case .pass: UInt8(ascii: "+")
        case .fail: UInt8(ascii: "-")
        case .softfail: UInt8(ascii: "~")
        case .neutral: UInt8(ascii: "?")
        default: nil
        }
    }

    /// An answer the evaluation holds, without counting it as a query.
    func peek(_ name: DNSName?, _ type: DNSType) -> SPFAnswer? {
        guard let name else { return nil }
        return evaluation.answers[DNSQuestion(name, type)]
    }

    private func record(for name: DNSName?) -> (domain: [UInt8], record: SPFRecord)? {
        guard let name else { return nil }
        let text = name.macroText
        return records.first { DNSName.equalFolded($0.domain[...], text[...]) }
    }

    private func matchedTerm(in entry: (domain: [UInt8], record: SPFRecord), result: SPFResult, depth: Int) -> String? {
        guard depth < 12, let wanted = SPFRun.qualifier(for: result) else { return nil }
        let context = macroContext(domain: entry.domain, uses: entry.record.macros)
        for directive in entry.record.directives {
            let term = entry.record.string(directive.text)
            switch matches(directive, in: entry, context: context, depth: depth) {
            case true?: return directive.qualifier == wanted ? term : nil
            case false?: continue
            case nil: if directive.qualifier == wanted { return term }
            }
        }
        guard let redirect = entry.record.redirect, !entry.record.hasAll,
              let next = record(for: expandName(entry.record.source[redirect], domain: entry.domain, context: context)) else { return nil }
        return matchedTerm(in: next, result: result, depth: depth + 1)
    }

    /// Whether an included record passes (its first matching term is a "+" one, or its
    /// redirect target passes), from the evaluation's answers; nil when unknown. A record
    /// decided by another term does not pass: the include does not match, and the term
    /// after it decides (it was "unknown", and a "-include" was named as the term that decided).
    private func passes(_ entry: (domain: [UInt8], record: SPFRecord), depth: Int) -> Bool? {
        guard depth < 12 else { return nil }
        let context = macroContext(domain: entry.domain, uses: entry.record.macros)
        for directive in entry.record.directives {
            switch matches(directive, in: entry, context: context, depth: depth) {
            case true?: return directive.qualifier == UInt8(ascii: "+")
            case false?: continue
            case nil: return nil
            }
        }
        guard let redirect = entry.record.redirect else { return false }  // neutral: the include does not match
        guard let next = record(for: expandName(entry.record.source[redirect], domain: entry.domain, context: context)) else { return nil }
        return passes(next, depth: depth + 1)
    }

    /// Whether `directive` matched the client, from the evaluation's answers; nil when unknown.
    private func matches(_ directive: SPFRecord.Directive, in entry: (domain: [UInt8], record: SPFRecord),
                         context: SPFMacroContext, depth: Int) -> Bool? {
        let octets = evaluation.clientOctets
        let prefix = Int(client.isV4 ? (directive.cidr4 ?? 32) : (directive.cidr6 ?? 128))
        let name = { self.expandName(directive.domainSpec.map { entry.record.source[$0] }, domain: entry.domain, context: context) }
        func covers(_ addresses: [UInt8]) -> Bool {
            let width = octets.count
            var i = 0
            while i + width <= addresses.count {
                if let address = IPAddress(octets: Array(addresses[i..<(i + width)])),
                   address.masked(to: prefix) == client.masked(to: prefix) { return true }
                i += width
            }
            return false
        }
        switch directive.mechanism {
        case .all:
            return true
        case .ip4, .ip6:
            return SPFRun.matches(directive, client)
        case .a:
            guard let answer = peek(name(), addressType) else { return nil }
            return covers(answer.addresses)
        case .mx:
            guard let answer = peek(name(), .mx) else { return nil }
            var unknown = false
            for exchange in answer.names {
                guard let addresses = peek(exchange, addressType) else { unknown = true; continue }
                if covers(addresses.addresses) { return true }
            }
            return unknown ? nil : false
        case .exists:
            guard let answer = peek(name(), .a) else { return nil }
            return answer.recordCount > 0
        case .include:
            guard let included = record(for: name()) else { return nil }
            return passes(included, depth: depth + 1)
        case .ptr:
            guard let target = name(), let ptr = peek(DNSName.reverse(octets), .ptr) else { return nil }
            for host in ptr.names.prefix(10) {
                guard let addresses = peek(host, addressType) else { continue }
                if SPFRun.contains(addresses.addresses, octets) && host.isSubdomain(of: target) { return true }
            }
            return false
        }
    }

    /// The expanded explanation of a fail (RFC 7208 §6.2), nil when there is none.
    func explanation() -> [UInt8]? {
        guard let text = explanationText else { return nil }
        // %{d} is the domain of the record whose exp= named this explanation.
        let owner = explanationOwner ?? records.first?.domain ?? evaluation.domain
        var context = macroContext(domain: owner, uses: SPFMacroSet(letters: text[...]))
        context.now = Int(time(nil))
        return context.expandExplanation(text[...])
    }
}
