// SPFVerifier's inside: one worker thread's libspf2 server and the DNS layer Backstop
// gives it (nested in SPFVerifier, so every libspf2 call stays behind that type). libspf2
// calls back into `spfLookup`, `spfGetRecord` and `spfGetExplanation` (C function
// pointers) on this worker's thread; they reach the evaluation in progress through the
// DNS layer's `hook`. Everything RFC 7208 asks of the DNS side that libspf2 gets wrong is
// done here: record selection and grammar, lookup and void-lookup limits through include
// and redirect, the deadline, and the cap on queries.

import CSPF2
import Foundation
import Metrics
import NIOCore

extension SPFVerifier {
    /// The state of the one evaluation running on a worker. Only that worker touches it.
    final class Evaluation {
        let query: SPFQuery
        let client: IPAddress
        let deadline: NIODeadline
        let settings: SPFVerifier.Settings
        var lookups = 0
        var voidLookups = 0
        var queries = 0
        /// The first error that decides the result whatever libspf2 makes of it afterwards.
        var forced: (SPFResult, String)?
        /// What fetching the top-level record gave, when it gave no record.
        var topProblem: (SPFResult, String)?
        var recordFetches = 0
        /// Every record fetched, in order, with the domain it was fetched for.
        var records: [(domain: String, record: SPFRecord)] = []
        /// Host names from an MX or PTR answer: their address lookups are part of that
        /// mechanism's one lookup (RFC 7208 §4.6.4), not new ones.
        var secondaryNames: [String: Int] = [:]
        var explanationDomain: String?
        var explanationText: String?
        /// Names Backstop writes into rewritten records in place of what libspf2 cannot read
        /// (spaces, over-long names, "any address" for a/0 and mx/0); see `alias`.
        var aliases: [(name: String, anyAddress: Bool)] = []
        /// Expanded exp= names, lower-cased, to the domain of the record that named them.
        var explanationOwners: [String: String] = [:]
        /// %{p} per target domain, found once per evaluation.
        var validated: [String: String] = [:]

        static let aliasSuffix = ".backstop-alias.invalid"

        func alias(_ name: String, anyAddress: Bool) -> String {
            aliases.append((name, anyAddress))
            return "a\(aliases.count - 1)" + SPFVerifier.Evaluation.aliasSuffix
        }

        func unalias(_ key: String) -> (name: String, anyAddress: Bool)? {
            guard key.hasSuffix(SPFVerifier.Evaluation.aliasSuffix), key.hasPrefix("a"),
                  let index = Int(key.dropFirst().dropLast(SPFVerifier.Evaluation.aliasSuffix.count)),
                  aliases.indices.contains(index) else { return nil }
            return aliases[index]
        }

        init(query: SPFQuery, client: IPAddress, deadline: NIODeadline, settings: SPFVerifier.Settings) {
            self.query = query
            self.client = client
            self.deadline = deadline
            self.settings = settings
        }

        var remaining: TimeInterval {
            Double((deadline - NIODeadline.now()).nanoseconds) / 1e9
        }

        func force(_ result: SPFResult, _ why: String) {
            if forced == nil { forced = (result, why) }
        }
    }

    final class Worker: @unchecked Sendable {
        let shared: SPFShared
        let dns: UnsafeMutablePointer<SPF_dns_server_t>
        let server: UnsafeMutablePointer<SPF_server_t>
        var evaluation: SPFVerifier.Evaluation?

        init(shared: SPFShared) {
            self.shared = shared
            dns = UnsafeMutablePointer<SPF_dns_server_t>.allocate(capacity: 1)
            dns.initialize(to: SPF_dns_server_t())
            dns.pointee.destroy = nil          // we free it, not libspf2
            dns.pointee.lookup = spfLookup
            dns.pointee.get_spf = spfGetRecord
            dns.pointee.get_exp = spfGetExplanation
            dns.pointee.add_cache = nil
            dns.pointee.layer_below = nil
            dns.pointee.name = UnsafePointer(strdup("backstop"))
            dns.pointee.debug = 0
            server = SPF_server_new_dns(dns, 0)
            dns.pointee.hook = Unmanaged.passUnretained(self).toOpaque()
            SPF_server_set_rec_dom(server, shared.settings.receiver)
        }

        func close() {
            SPF_server_free(server)
            free(UnsafeMutableRawPointer(mutating: dns.pointee.name))
            dns.deallocate()
        }

        static func from(_ dns: UnsafeMutablePointer<SPF_dns_server_t>?) -> SPFVerifier.Worker? {
            guard let hook = dns?.pointee.hook else { return nil }
            return Unmanaged<SPFVerifier.Worker>.fromOpaque(hook).takeUnretainedValue()
        }

        // MARK: one evaluation

        func evaluate(_ query: SPFQuery, deadline: NIODeadline) -> SPFOutcome {
            let started = NIODeadline.now()
            shared.evaluations.add(1)
            var outcome = run(query, deadline: deadline)
            outcome.elapsed = NIODeadline.now() - started
            shared.metrics.evaluations[outcome.result]?.increment()
            shared.metrics.duration.recordNanoseconds(outcome.elapsed.nanoseconds)
            return outcome
        }

        private func run(_ query: SPFQuery, deadline: NIODeadline) -> SPFOutcome {
            // IPv4-mapped IPv6 clients are checked as the IPv4 address they carry (IPAddress does it).
            guard let client = IPAddress(query.clientAddress) else {
                return SPFOutcome(result: .none, query: query, problem: "client address is not an IP address")
            }
            let domain = query.domain
            if let problem = SPFQuery.domainProblem(domain) {
                // RFC 7208 §4.3: a malformed or single-label domain gives none.
                return SPFOutcome(result: .none, query: query, problem: "\(problem)")
            }
            let state = SPFVerifier.Evaluation(query: query, client: client, deadline: deadline, settings: shared.settings)
            evaluation = state
            defer { evaluation = nil }

            guard let request = SPF_request_new(server) else {
                return SPFOutcome(result: .temperror, query: query, problem: "out of memory")
            }
            defer { SPF_request_free(request) }
            switch client {
            case .v4(let a):
                SPF_request_set_ipv4(request, in_addr(s_addr: a.bigEndian))
            case .v6(let hi, let lo):
                var addr = in6_addr()
                withUnsafeMutableBytes(of: &addr) { raw in
                    for i in 0..<8 { raw[i] = UInt8(truncatingIfNeeded: hi >> (56 - 8 * UInt64(i))) }
                    for i in 0..<8 { raw[8 + i] = UInt8(truncatingIfNeeded: lo >> (56 - 8 * UInt64(i))) }
                }
                SPF_request_set_ipv6(request, addr)
            }
            if !query.helo.isEmpty { SPF_request_set_helo_dom(request, query.helo) }
            guard SPF_request_set_env_from(request, query.checkedMailbox) == 0 else {
                return SPFOutcome(result: .none, query: query, problem: "the sender is not a usable mailbox")
            }

            var response: UnsafeMutablePointer<SPF_response_t>?
            let code = SPF_request_query_mailfrom(request, &response)
            defer { if let response { SPF_response_free(response) } }

            var result: SPFResult
            var problem: String?
            var reason = SPF_REASON_NONE
            if let forced = state.forced {
                (result, problem) = forced
            } else if let top = state.topProblem {
                (result, problem) = top
            } else if let response {
                reason = SPF_response_reason(response)
                switch SPF_response_result(response) {
                case SPF_RESULT_PASS: result = .pass
                case SPF_RESULT_FAIL: result = .fail
                case SPF_RESULT_SOFTFAIL: result = .softfail
                case SPF_RESULT_NEUTRAL: result = .neutral
                case SPF_RESULT_NONE: result = .none
                case SPF_RESULT_TEMPERROR: result = .temperror
                case SPF_RESULT_PERMERROR: result = .permerror
                default: result = SPFVerifier.Worker.result(for: code)
                }
                if result == .temperror || result == .permerror || result == .none {
                    problem = String(cString: SPF_strerror(SPF_response_errcode(response) == SPF_E_SUCCESS ? code : SPF_response_errcode(response)))
                }
            } else {
                result = SPFVerifier.Worker.result(for: code)
                problem = String(cString: SPF_strerror(code))
            }

            var outcome = SPFOutcome(result: result, query: query, problem: problem)
            outcome.lookups = state.lookups
            outcome.voidLookups = state.voidLookups
            outcome.queries = state.queries
            if [.pass, .fail, .softfail, .neutral].contains(result) {
                outcome.mechanism = reason == SPF_REASON_DEFAULT ? "default"
                    : reason == SPF_REASON_LOCALHOST ? "localhost"
                    : matchedMechanism(result, state: state)
            }
            if result == .fail { outcome.explanation = explanation(state) }
            return outcome
        }

        /// A libspf2 error code with no result attached, as an RFC 7208 result.
        static func result(for code: SPF_errcode_t) -> SPFResult {
            switch code {
            case SPF_E_SUCCESS: return .neutral
            case SPF_E_NOT_SPF: return .none
            case SPF_E_DNS_ERROR, SPF_E_NO_MEMORY, SPF_E_INTERNAL_ERROR, SPF_E_NOT_CONFIG: return .temperror
            default: return .permerror
            }
        }

        /// The term that decided. libspf2 does not say, so the record is walked again in order
        /// against the DNS answers the evaluation left in the cache: the first term that matches
        /// is it; a term whose answers are not cached (or an include/exists that cannot be
        /// re-checked) is taken when its qualifier gives `result`.
        func matchedMechanism(_ result: SPFResult, state: SPFVerifier.Evaluation) -> String? {
            guard let top = state.records.first else { return nil }
            return matchedTerm(in: top, result: result, state: state, depth: 0)
        }

        private static func qualifier(for result: SPFResult) -> Character? {
            switch result {
            case .pass: "+"
            case .fail: "-"
            case .softfail: "~"
            case .neutral: "?"
            default: nil
            }
        }

        private func matchedTerm(in entry: (domain: String, record: SPFRecord), result: SPFResult, state: SPFVerifier.Evaluation, depth: Int) -> String? {
            guard depth < 12, let wanted = SPFVerifier.Worker.qualifier(for: result) else { return nil }
            for directive in entry.record.directives {
                switch matches(directive, domain: entry.domain, state: state, depth: depth) {
                case true?: return directive.qualifier == wanted ? directive.text : nil
                case false?: continue
                case nil: if directive.qualifier == wanted { return directive.text }
                }
            }
            guard let redirect = entry.record.redirect, !entry.record.hasAll else { return nil }
            let target = macroContext(state, domain: entry.domain).expandDomain(redirect) ?? redirect
            guard let next = state.records.first(where: { $0.domain.lowercased() == target.lowercased() }) else { return nil }
            return matchedTerm(in: next, result: result, state: state, depth: depth + 1)
        }

        /// Whether `directive` matched the client, from cached answers only; nil when unknown.
        private func matches(_ directive: SPFRecord.Directive, domain: String, state: SPFVerifier.Evaluation, depth: Int) -> Bool? {
            let client = state.client
            let family: DNSType = client.isV4 ? .a : .aaaa
            let prefix = client.isV4 ? (directive.cidr4 ?? 32) : (directive.cidr6 ?? 128)
            func name() -> String {
                guard let spec = directive.domainSpec else { return domain }
                return macroContext(state, domain: domain).expandDomain(spec) ?? spec
            }
            func contains(_ records: [DNSRecordData], prefix: Int) -> Bool {
                records.contains { record in
                    guard case .address(let octets) = record, let address = IPAddress(octets: octets), address.isV4 == client.isV4 else { return false }
                    return address.masked(to: prefix) == client.masked(to: prefix)
                }
            }
            switch directive.mechanism {
            case .all:
                return true
            case .ip4, .ip6:
                guard let network = directive.network, let cidr = CIDR("\(network)/\(directive.mechanism == .ip4 ? (directive.cidr4 ?? 32) : (directive.cidr6 ?? 128))") else { return false }
                return cidr.contains(client)
            case .a:
                guard let answer = shared.cache.answer(name(), family) else { return nil }
                return contains(answer.records, prefix: prefix)
            case .mx:
                guard let answer = shared.cache.answer(name(), .mx) else { return nil }
                var unknown = false
                for case .mx(_, let exchange) in answer.records {
                    guard let addresses = shared.cache.answer(exchange, family) else { unknown = true; continue }
                    if contains(addresses.records, prefix: prefix) { return true }
                }
                return unknown ? nil : false
            case .exists:
                guard let answer = shared.cache.answer(name(), .a) else { return nil }
                return !answer.records.isEmpty
            case .ptr, .include:
                let target = name()
                if directive.mechanism == .include {
                    guard let included = state.records.first(where: { $0.domain.lowercased() == target.lowercased() }) else { return nil }
                    guard let term = matchedTerm(in: included, result: .pass, state: state, depth: depth + 1) else { return nil }
                    return term.first.map { !"-~?".contains($0) }
                }
                let validated = validatedNameFromCache(state)
                guard let validated else { return nil }
                return validated.contains { $0 == target.lowercased() || $0.hasSuffix("." + target.lowercased()) }
            }
        }

        /// The client's PTR names confirmed by cached A/AAAA answers; nil when not cached.
        private func validatedNameFromCache(_ state: SPFVerifier.Evaluation) -> [String]? {
            guard let ptr = shared.cache.answer(SPFVerifier.Worker.reverseName(state.client), .ptr) else { return nil }
            var confirmed: [String] = []
            for case .name(let host) in ptr.records.prefix(10) {
                guard let addresses = shared.cache.answer(host, state.client.isV4 ? .a : .aaaa) else { continue }
                if addresses.records.contains(.address(state.client.octets)) { confirmed.append(host.lowercased()) }
            }
            return confirmed
        }

        static func reverseName(_ client: IPAddress) -> String {
            let octets = client.octets
            if client.isV4 { return octets.reversed().map(String.init).joined(separator: ".") + ".in-addr.arpa" }
            return octets.reversed().flatMap { [String($0 & 0xF, radix: 16), String($0 >> 4, radix: 16)] }
                .joined(separator: ".") + ".ip6.arpa"
        }

        func macroContext(_ state: SPFVerifier.Evaluation, domain: String, needsValidatedName: Bool = false) -> SPFMacroContext {
            var context = SPFMacroContext(sender: state.query.checkedMailbox, domain: domain, client: state.client,
                                          helo: state.query.helo, receiver: shared.settings.receiver)
            context.upperNibbles = state.query.clientAddress.contains(where: { "ABCDEF".contains($0) })
            if needsValidatedName { context.validatedDomain = validatedName(state, target: domain) }
            return context
        }

        /// %{p} (RFC 7208 §7.3): a name of the client that PTR gives and A/AAAA confirms,
        /// preferring the target domain or a subdomain of it; "unknown" when there is none.
        /// These queries are not DNS-mechanism lookups and are not counted as such.
        func validatedName(_ state: SPFVerifier.Evaluation, target: String) -> String {
            let key = target.lowercased()
            if let known = state.validated[key] { return known }
            var found: [String] = []
            let octets = state.client.octets
            let reverse = SPFVerifier.Worker.reverseName(state.client)
            let timeout = { min(max(state.remaining, 0), Double(state.settings.dnsTimeout.nanoseconds) / 1e9) }
            let budget = { state.remaining > 0 && state.queries < state.settings.maxQueries }
            guard budget() else { return "unknown" }
            state.queries += 1
            let ptr = shared.resolve(reverse, .ptr, timeout: timeout())
            for case .name(let host) in ptr.records.prefix(10) where budget() {
                state.queries += 1
                let addresses = shared.resolve(host, state.client.isV4 ? .a : .aaaa, timeout: timeout())
                if addresses.records.contains(.address(octets)) { found.append(host) }
            }
            let chosen = found.first(where: { $0.lowercased() == key }) ?? found.first(where: { $0.lowercased().hasSuffix("." + key) })
                ?? found.first ?? "unknown"
            state.validated[key] = chosen
            return chosen
        }

        /// A name libspf2 can take literally in a record.
        static func isPlainName(_ name: String) -> Bool {
            guard !name.isEmpty, name.utf8.count <= 253 else { return false }
            let labels = name.split(separator: ".", omittingEmptySubsequences: false)
            guard labels.count >= 2, let last = labels.last, last.contains(where: { $0.isLetter }) else { return false }
            for label in labels {
                guard (1...63).contains(label.utf8.count),
                      label.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return false }
            }
            return true
        }

        /// The explanation for a fail, expanded by Backstop (RFC 7208 §6.2): Debian's libspf2
        /// garbles it. nil when the domain publishes none or it is unusable.
        func explanation(_ state: SPFVerifier.Evaluation) -> String? {
            guard let expDomain = state.explanationDomain, let text = state.explanationText else { return nil }
            // %{d} is the domain of the record whose exp= named this explanation.
            let domain = state.explanationOwners[expDomain.lowercased()] ?? state.records.first?.domain ?? state.query.domain
            let context = macroContext(state, domain: domain, needsValidatedName: text.lowercased().contains("%{p"))
            return context.expand(text, explanation: true)
        }

        // MARK: the DNS layer

        /// A DNS answer for libspf2, with the limits applied. `counted` says whether this query
        /// is one of RFC 7208 §4.6.4's DNS-mechanism lookups.
        func answer(_ name: String, _ type: DNSType, state: SPFVerifier.Evaluation) -> DNSAnswer {
            if state.forced != nil { return DNSAnswer(status: .serverFailure) }
            let remaining = state.remaining
            if remaining <= 0 {
                state.force(.temperror, "SPF evaluation deadline expired")
                return DNSAnswer(status: .timeout)
            }
            state.queries += 1
            if state.queries > state.settings.maxQueries {
                state.force(.permerror, "more than \(state.settings.maxQueries) DNS queries")
                return DNSAnswer(status: .serverFailure)
            }
            let timeout = min(remaining, Double(state.settings.dnsTimeout.nanoseconds) / 1e9)
            let answer = shared.resolve(name, type, timeout: timeout)
            if answer.status == .timeout && state.remaining <= 0 {
                state.force(.temperror, "SPF evaluation deadline expired")
            }
            return answer
        }

        /// Counts a DNS-mechanism lookup; false (and permerror) past the limit.
        func countLookup(_ state: SPFVerifier.Evaluation) -> Bool {
            state.lookups += 1
            if state.lookups > 10 {
                state.force(.permerror, "more than 10 DNS-mechanism lookups (RFC 7208 §4.6.4)")
                return false
            }
            return true
        }

        func countVoid(_ state: SPFVerifier.Evaluation, _ answer: DNSAnswer) {
            guard answer.isVoid else { return }
            state.voidLookups += 1
            if state.voidLookups > 2 {
                state.force(.permerror, "more than 2 void lookups (RFC 7208 §4.6.4)")
            }
        }

        func lookup(_ domain: String, _ rawType: UInt32) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
            guard let state = evaluation else { return makeRR(domain, rawType, herrno: TRY_AGAIN, records: [], ttl: 0) }
            let asked = domain.hasSuffix(".") ? String(domain.dropLast()) : domain
            let key = asked.lowercased()
            var name = asked
            var anyAddress = false
            if let (real, any) = state.unalias(key) {
                name = real
                anyAddress = any
            }
            SPFVerifier.Worker.trace("lookup \(rawType) \(asked) -> \(name)\(anyAddress ? " (any address)" : "")")
            let type: DNSType
            switch rawType {
            case ns_t_a.rawValue: type = .a
            case ns_t_aaaa.rawValue: type = .aaaa
            case ns_t_mx.rawValue: type = .mx
            case ns_t_ptr.rawValue: type = .ptr
            case ns_t_txt.rawValue: type = .txt
            default:
                // Type SPF (99) is obsolete (RFC 7208 §3.1): never asked.
                return makeRR(domain, rawType, herrno: NO_DATA, records: [], ttl: 0)
            }
            var counted = false
            switch type {
            case .mx, .ptr:
                counted = true
            case .a, .aaaa:
                if let n = state.secondaryNames[key], n > 0 {
                    state.secondaryNames[key] = n - 1
                } else {
                    counted = true
                }
            default:
                break
            }
            if counted {
                if type == .mx || type == .ptr { state.secondaryNames.removeAll() }
                guard countLookup(state) else { return makeRR(domain, rawType, herrno: TRY_AGAIN, records: [], ttl: 0) }
            }
            let answer = SPFQuery.domainProblem(name) == nil ? self.answer(name, type, state: state) : DNSAnswer(status: .invalidName)
            if state.forced != nil { return makeRR(domain, rawType, herrno: TRY_AGAIN, records: [], ttl: 0) }
            if counted { countVoid(state, answer) }
            if state.forced != nil { return makeRR(domain, rawType, herrno: TRY_AGAIN, records: [], ttl: 0) }
            switch answer.status {
            case .success:
                if answer.records.isEmpty { return makeRR(domain, rawType, herrno: NO_DATA, records: [], ttl: answer.ttl) }
                var records = answer.records
                if type == .mx {
                    if records.count > 10 {
                        state.force(.permerror, "more than 10 MX records for \(name) (RFC 7208 §4.6.4)")
                        return makeRR(domain, rawType, herrno: TRY_AGAIN, records: [], ttl: 0)
                    }
                    records.sort { a, b in
                        if case .mx(let pa, _) = a, case .mx(let pb, _) = b { return pa < pb }
                        return false
                    }
                }
                if type == .ptr && records.count > 10 { records = Array(records.prefix(10)) }
                if anyAddress {
                    switch type {
                    case .a where state.client.isV4, .aaaa where !state.client.isV4:
                        // a/0: any address of the client's family matches; answer with the client's own.
                        records = [.address(state.client.octets)]
                    case .mx:
                        records = records.map { record in
                            guard case .mx(let preference, let exchange) = record else { return record }
                            return .mx(preference: preference, exchange: state.alias(exchange, anyAddress: true))
                        }
                    default:
                        break
                    }
                }
                for record in records {
                    switch record {
                    case .mx(_, let exchange): state.secondaryNames[exchange.lowercased(), default: 0] += 2
                    case .name(let host) where type == .ptr: state.secondaryNames[host.lowercased(), default: 0] += 2
                    default: break
                    }
                }
                return makeRR(domain, rawType, herrno: NETDB_SUCCESS, records: records, ttl: answer.ttl)
            case .nameError, .invalidName:
                return makeRR(domain, rawType, herrno: HOST_NOT_FOUND, records: [], ttl: answer.ttl)
            case .serverFailure, .timeout:
                return makeRR(domain, rawType, herrno: TRY_AGAIN, records: [], ttl: 0)
            }
        }

        func makeRR(_ domain: String, _ rawType: UInt32, herrno: Int32, records: [DNSRecordData], ttl: UInt32) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
            guard let rr = SPF_dns_rr_new_init(dns, domain, ns_type(rawValue: rawType), Int32(clamping: ttl), herrno) else { return nil }
            var count: Int32 = 0
            for record in records {
                var bytes: [UInt8]
                switch record {
                case .address(let octets): bytes = octets
                case .name(let host): bytes = Array(host.utf8) + [0]
                case .mx(_, let exchange): bytes = Array(exchange.utf8) + [0]
                case .txt(let strings): bytes = strings.flatMap { $0 } + [0]
                }
                guard SPF_dns_rr_buf_realloc(rr, count, bytes.count) == SPF_E_SUCCESS, let slot = rr.pointee.rr[Int(count)] else { break }
                bytes.withUnsafeBytes { UnsafeMutableRawPointer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                count += 1
            }
            rr.pointee.num_rr = count
            return rr
        }

        /// Fetches, selects, checks and compiles the SPF record of the request's current domain.
        func getRecord(_ request: UnsafeMutablePointer<SPF_request_t>, _ response: UnsafeMutablePointer<SPF_response_t>,
                       _ recordp: UnsafeMutablePointer<UnsafeMutablePointer<SPF_record_t>?>) -> SPF_errcode_t {
            recordp.pointee = nil
            guard let state = evaluation, let cur = request.pointee.cur_dom else { return SPF_E_INTERNAL_ERROR }
            var domain = String(cString: cur)
            if domain.hasSuffix(".") { domain.removeLast() }
            if let (real, _) = state.unalias(domain.lowercased()) { domain = real }
            let topLevel = state.recordFetches == 0
            state.recordFetches += 1

            func fail(_ result: SPFResult, _ why: String, _ code: SPF_errcode_t) -> SPF_errcode_t {
                if topLevel {
                    if state.topProblem == nil { state.topProblem = (result, why) }
                } else {
                    // include and redirect pass permerror and temperror up unchanged, and a
                    // target without a record is a permerror (RFC 7208 §5.2, §6.1).
                    state.force(result == .none ? .permerror : result, why)
                }
                response.pointee.result = result == .temperror ? SPF_RESULT_TEMPERROR : result == .none ? SPF_RESULT_NONE : SPF_RESULT_PERMERROR
                response.pointee.reason = SPF_REASON_FAILURE
                response.pointee.err = code
                return code
            }

            if state.forced != nil { return fail(.permerror, "evaluation stopped", SPF_E_DNS_ERROR) }
            if !topLevel {
                guard countLookup(state) else { return fail(.permerror, "lookup limit", SPF_E_BIG_DNS) }
            }
            if let problem = SPFQuery.domainProblem(domain) {
                if !topLevel { countVoid(state, DNSAnswer(status: .invalidName)) }
                return fail(.none, problem, SPF_E_NOT_SPF)
            }
            let answer = self.answer(domain, .txt, state: state)
            if let forced = state.forced { return fail(forced.0, forced.1, SPF_E_DNS_ERROR) }
            if !topLevel { countVoid(state, answer) }
            if state.forced != nil { return fail(.permerror, "void lookup limit", SPF_E_BIG_DNS) }
            switch answer.status {
            case .timeout, .serverFailure:
                return fail(.temperror, "DNS failure fetching the SPF record of \(domain)", SPF_E_DNS_ERROR)
            case .nameError, .invalidName:
                return fail(.none, "\(domain) does not exist", SPF_E_NOT_SPF)
            case .success:
                break
            }
            var found: [[UInt8]] = []
            for record in answer.records {
                guard case .txt(let strings) = record else { continue }
                let joined = strings.flatMap { $0 }
                if SPFRecord.isSPF1(joined) { found.append(joined) }
            }
            if found.isEmpty { return fail(.none, "\(domain) publishes no SPF record", SPF_E_NOT_SPF) }
            if found.count > 1 { return fail(.permerror, "\(domain) publishes more than one SPF record", SPF_E_MULTIPLE_RECORDS) }
            let record: SPFRecord
            switch SPFRecord.parse(found[0]) {
            case .failure(let error):
                return fail(.permerror, "SPF record of \(domain): \(error.description)", SPF_E_SYNTAX)
            case .success(let parsed):
                record = parsed
            }
            state.records.append((domain, record))
            let needsP = found[0].contains(where: { $0 == UInt8(ascii: "p") || $0 == UInt8(ascii: "P") })
                && String(decoding: found[0], as: UTF8.self).lowercased().contains("%{p")
            let context = macroContext(state, domain: domain, needsValidatedName: needsP)
            if let exp = record.exp, let expanded = context.expandDomain(exp) {
                state.explanationOwners[expanded.lowercased()] = domain
            }
            let text = record.libspf2Text(client: state.client) { spec, use in
                let expanded = spec.map { context.expandDomain($0) ?? $0 } ?? domain
                switch use {
                case .compare:
                    return SPFVerifier.Worker.isPlainName(expanded) ? expanded : (spec ?? domain)
                case .lookup:
                    return SPFVerifier.Worker.isPlainName(expanded) ? expanded : state.alias(expanded, anyAddress: false)
                case .anyAddress:
                    return state.alias(expanded, anyAddress: true)
                }
            }
            SPFVerifier.Worker.trace("record \(domain): \(text)")
            var compiled: UnsafeMutablePointer<SPF_record_t>?
            let code = SPF_record_compile(server, response, &compiled, text)
            guard code == SPF_E_SUCCESS, let compiled else {
                if let compiled { SPF_record_free(compiled) }
                return fail(.permerror, "SPF record of \(domain): \(String(cString: SPF_strerror(code)))", code)
            }
            recordp.pointee = compiled
            return SPF_E_SUCCESS
        }

        /// The explanation TXT record (RFC 7208 §6.2). Kept for Backstop's own expansion; the
        /// text handed back to libspf2 is only a placeholder it may print.
        func getExplanation(_ domain: String, _ bufp: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>,
                            _ lengthp: UnsafeMutablePointer<Int>) -> SPF_errcode_t {
            guard let state = evaluation else { return SPF_E_DNS_ERROR }
            var name = domain
            if name.hasSuffix(".") { name.removeLast() }
            if let (real, _) = state.unalias(name.lowercased()) { name = real }
            SPFVerifier.Worker.trace("explanation \(name)")
            guard SPFQuery.domainProblem(name) == nil, state.forced == nil, state.remaining > 0,
                  state.queries < state.settings.maxQueries else { return SPF_E_DNS_ERROR }
            let answer = shared.resolve(name, .txt, timeout: min(state.remaining, Double(state.settings.dnsTimeout.nanoseconds) / 1e9))
            state.queries += 1
            let texts = answer.records.compactMap { record -> [UInt8]? in
                if case .txt(let strings) = record { return strings.flatMap { $0 } }
                return nil
            }
            guard answer.status == .success, texts.count == 1 else { return SPF_E_DNS_ERROR }
            let text = String(decoding: texts[0], as: UTF8.self)
            guard texts[0].allSatisfy({ $0 >= 0x20 && $0 < 0x7F }), SPFRecord.checkMacroString(text, explanation: true) == nil else {
                return SPF_E_INVALID_CHAR
            }
            state.explanationDomain = name
            state.explanationText = text
            let placeholder = Array("explanation".utf8) + [0]
            if lengthp.pointee < placeholder.count || bufp.pointee == nil {
                guard let grown = realloc(bufp.pointee, placeholder.count) else { return SPF_E_NO_MEMORY }
                bufp.pointee = grown.assumingMemoryBound(to: CChar.self)
                lengthp.pointee = placeholder.count
            }
            placeholder.withUnsafeBytes { UnsafeMutableRawPointer(bufp.pointee!).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return SPF_E_SUCCESS
        }
    }
}

extension SPFVerifier.Worker {
    static let tracing = ProcessInfo.processInfo.environment["BACKSTOP_SPF_TRACE"] != nil

    /// Development aid: BACKSTOP_SPF_TRACE=1 prints what libspf2 asks and is given.
    static func trace(_ line: @autoclosure () -> String) {
        if tracing { FileHandle.standardError.write(Data(("spf: " + line() + "\n").utf8)) }
    }
}

extension IPAddress {
    /// An address from 4 or 16 octets in network order.
    init?(octets: [UInt8]) {
        switch octets.count {
        case 4:
            self = .v4(octets.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            self = .v6(octets[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, octets[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
        default:
            return nil
        }
    }

    /// The address in network order: 4 octets or 16.
    var octets: [UInt8] {
        switch self {
        case .v4(let a): return (0..<4).map { UInt8(truncatingIfNeeded: a >> (24 - 8 * UInt32($0))) }
        case .v6(let hi, let lo):
            return (0..<8).map { UInt8(truncatingIfNeeded: hi >> (56 - 8 * UInt64($0))) }
                + (0..<8).map { UInt8(truncatingIfNeeded: lo >> (56 - 8 * UInt64($0))) }
        }
    }
}

// The C entry points libspf2 calls. They find their worker through the DNS layer's hook.

private let spfLookup: SPF_dns_lookup_t = { dns, domain, type, _ in
    guard let worker = SPFVerifier.Worker.from(dns), let domain else { return nil }
    return worker.lookup(String(cString: domain), type.rawValue)
}

private let spfGetRecord: SPF_dns_get_spf_t = { server, request, response, recordp in
    guard let server, let request, let response, let recordp,
          let worker = SPFVerifier.Worker.from(server.pointee.resolver) else { return SPF_E_INTERNAL_ERROR }
    return worker.getRecord(request, response, recordp)
}

private let spfGetExplanation: SPF_dns_get_exp_t = { server, domain, bufp, lengthp in
    guard let server, let domain, let bufp, let lengthp,
          let worker = SPFVerifier.Worker.from(server.pointee.resolver) else { return SPF_E_INTERNAL_ERROR }
    return worker.getExplanation(String(cString: domain), bufp, lengthp)
}
