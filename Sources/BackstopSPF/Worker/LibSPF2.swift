// The one place Backstop calls libspf2, in a worker process only. libspf2 evaluates; its
// DNS layer is replaced by Backstop's (the C callbacks below) answering from what the
// server sent for the evaluation: record selection and grammar, lookup and void-lookup
// limits through include and redirect, and the query cap are enforced here, where libspf2
// gets them wrong or not at all. A pass that lacks an answer ends with `missing` set and
// the worker asks the server. It opens no socket and reads no clock.

import BackstopCore
import CSPF2
import Glibc

final class LibSPF2 {
    private let dns: UnsafeMutablePointer<SPF_dns_server_t>
    private let server: UnsafeMutablePointer<SPF_server_t>
    /// The pass in progress; only set while libspf2 runs.
    private var run: SPFRun?

    init(receiver: [UInt8]) {
        backstop_spf_quiet()
        dns = UnsafeMutablePointer<SPF_dns_server_t>.allocate(capacity: 1)
        dns.initialize(to: SPF_dns_server_t())
        dns.pointee.destroy = nil          // freed here, not by libspf2
        dns.pointee.lookup = spfLookup
        dns.pointee.get_spf = spfGetRecord
        dns.pointee.get_exp = spfGetExplanation
        dns.pointee.add_cache = nil
        dns.pointee.layer_below = nil
        dns.pointee.name = UnsafePointer(strdup("backstop"))
        dns.pointee.debug = 0
        server = SPF_server_new_dns(dns, 0)
        dns.pointee.hook = Unmanaged.passUnretained(self).toOpaque()
        String(decoding: receiver, as: UTF8.self).withCString { _ = SPF_server_set_rec_dom(server, $0) }
        // libspf2's default explanation ("Please see …?id=%{S}&ip=%{C}…") is expanded for
        // every fail, softfail and neutral whose record has no exp=, with the sender
        // URL-encoded: the step that overflowed the heap on 8-bit octets before 1.2.11
        // (CVE-2021-33912). Backstop writes explanations itself, so libspf2's is a constant
        // and no sender octet reaches that code. It differs from the placeholder handed back
        // for a record's exp= (getExplanation), so the final response says which was used.
        var compiled: UnsafeMutablePointer<SPF_response_t>?
        _ = SPF_server_set_explanation(server, LibSPF2.defaultExplanation, &compiled)
        if let compiled { SPF_response_free(compiled) }
        // Backstop counts RFC 7208's ten lookups itself; libspf2's own count also sees the
        // redirects that join a long record's chain, which cost no lookup.
        _ = SPF_server_set_max_dns_mech(server, 100)
    }

    deinit {
        SPF_server_free(server)
        free(UnsafeMutableRawPointer(mutating: dns.pointee.name))
        dns.deallocate()
    }

    fileprivate static func from(_ dns: UnsafeMutablePointer<SPF_dns_server_t>?) -> LibSPF2? {
        guard let hook = dns?.pointee.hook else { return nil }
        return Unmanaged<LibSPF2>.fromOpaque(hook).takeUnretainedValue()
    }

    // MARK: one pass

    /// Runs libspf2 once over `state`. When `state.missing` is set afterwards the result
    /// means nothing: the pass needs that answer first.
    func pass(_ state: SPFRun) -> SPFWire.Result {
        let evaluation = state.evaluation
        if let problem = SPFQuery.domainProblem(String(decoding: evaluation.domain, as: UTF8.self)) {
            // RFC 7208 §4.3: a malformed or single-label domain gives none.
            return SPFWire.Result(result: .none, problem: Array(problem.utf8))
        }
        run = state
        defer { run = nil }
        guard let request = SPF_request_new(server) else { return SPFWire.Result(result: .temperror, problem: Array("out of memory".utf8)) }
        defer { SPF_request_free(request) }
        switch state.client {
        case .v4(let a):
            SPF_request_set_ipv4(request, in_addr(s_addr: a.bigEndian))
        case .v6:
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { raw in
                for (i, b) in evaluation.clientOctets.enumerated() { raw[i] = b }
            }
            SPF_request_set_ipv6(request, address)
        }
        if !evaluation.helo.isEmpty {
            String(decoding: evaluation.helo, as: UTF8.self).withCString { _ = SPF_request_set_helo_dom(request, $0) }
        }
        let accepted = String(decoding: evaluation.mailbox, as: UTF8.self).withCString { SPF_request_set_env_from(request, $0) }
        guard accepted == 0 else { return SPFWire.Result(result: .none, problem: Array("the sender is not a usable mailbox".utf8)) }

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
            default: result = LibSPF2.result(for: code)
            }
            if result == .temperror || result == .permerror || result == .none {
                let errcode = SPF_response_errcode(response) == SPF_E_SUCCESS ? code : SPF_response_errcode(response)
                problem = String(cString: SPF_strerror(errcode))
            }
        } else {
            result = LibSPF2.result(for: code)
            problem = String(cString: SPF_strerror(code))
        }
        var mechanism: String?
        if [.pass, .fail, .softfail, .neutral].contains(result) {
            mechanism = reason == SPF_REASON_DEFAULT ? "default"
                : reason == SPF_REASON_LOCALHOST ? "localhost"
                : state.matchedMechanism(result)
        }
        // The explanation fetched last is the answer's only when libspf2 used an exp= for
        // the final result: it also fetches one for an include that did not match (with the
        // including record's exp=), and after a redirect= to a record without exp= it uses
        // its default, which must not be the original domain's (RFC 7208 §6.2).
        let usedExp = response.flatMap { SPF_response_get_explanation($0) }.map { String(cString: $0) == LibSPF2.expPlaceholder } ?? false
        let explanation = result == .fail && usedExp ? state.explanation() : nil
        return SPFWire.Result(result: result, mechanism: Array((mechanism ?? "").utf8), explanation: explanation ?? [],
                              problem: Array((problem ?? "").utf8), lookups: state.lookups,
                              voidLookups: state.voidLookups, queries: state.queries)
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

    // MARK: the DNS layer libspf2 calls

    fileprivate func lookup(_ domain: UnsafePointer<CChar>, _ rawType: UInt32) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
        guard let state = run else { return makeRR(domain, rawType, herrno: TRY_AGAIN) }
        let asked = Array(UnsafeRawBufferPointer(start: domain, count: strlen(domain)))
        var name: DNSName?
        var anyAddress = false
        var secondary = false
        var fromPTR = false
        switch state.resolve(asked) {
        case .alias(let alias):
            name = alias.name
            anyAddress = alias.anyAddress
            secondary = alias.secondary
        case .chunk:
            return makeRR(domain, rawType, herrno: HOST_NOT_FOUND)
        case .plain(let plain):
            // The client's reverse name (a PTR query) or a name a PTR answer gave.
            name = plain
            secondary = rawType != ns_t_ptr.rawValue
            fromPTR = secondary
        }
        let type: DNSType
        switch rawType {
        case ns_t_a.rawValue: type = .a
        case ns_t_aaaa.rawValue: type = .aaaa
        case ns_t_mx.rawValue: type = .mx
        case ns_t_ptr.rawValue: type = .ptr
        case ns_t_txt.rawValue: type = .txt
        default:
            // Type SPF (99) is obsolete (RFC 7208 §3.1): never asked.
            return makeRR(domain, rawType, herrno: NO_DATA)
        }
        let counted = !secondary && type != .txt
        if counted {
            guard state.countLookup() else { return makeRR(domain, rawType, herrno: TRY_AGAIN) }
        }
        let answer: SPFAnswer
        if let name {
            guard let known = state.answer(DNSQuestion(name, type)) else { return makeRR(domain, rawType, herrno: TRY_AGAIN) }
            answer = known
        } else {
            answer = SPFAnswer(status: .nameError)
        }
        if state.forced != nil { return makeRR(domain, rawType, herrno: TRY_AGAIN) }
        if counted { state.countVoid(answer) }
        if state.forced != nil { return makeRR(domain, rawType, herrno: TRY_AGAIN) }
        switch answer.status {
        case .success:
            if answer.recordCount == 0 { return makeRR(domain, rawType, herrno: NO_DATA) }
            var records: [[UInt8]] = []
            switch type {
            case .a, .aaaa:
                let width = type == .a ? 4 : 16
                if anyAddress && type == state.addressType && answer.addresses.count >= width {
                    // a/0: any address of the client's family matches; answer with the client's own.
                    records = [state.evaluation.clientOctets]
                } else {
                    var i = 0
                    while i + width <= answer.addresses.count {
                        records.append(Array(answer.addresses[i..<(i + width)]))
                        i += width
                    }
                }
            case .mx:
                if answer.recordCount > 10 {
                    state.force(.permerror, "more than 10 MX records (RFC 7208 §4.6.4)")
                    return makeRR(domain, rawType, herrno: TRY_AGAIN)
                }
                for exchange in answer.names {
                    records.append(Array(state.alias(exchange, anyAddress: anyAddress, secondary: true).utf8) + [0])
                }
            case .ptr:
                // At most 10 names are used (RFC 7208 §4.6.4); only names libspf2 can compare
                // literally are given (a name with other octets cannot equal a domain-spec).
                for host in answer.names.prefix(10) {
                    guard let text = host.plainText, !text.hasSuffix(".invalid") else { continue }
                    records.append(Array(text.utf8) + [0])
                }
            case .txt, .cname:
                break
            }
            return makeRR(domain, rawType, herrno: NETDB_SUCCESS, records: records, ttl: answer.ttl)
        case .nameError:
            return makeRR(domain, rawType, herrno: HOST_NOT_FOUND)
        case .serverFailure, .timeout:
            // RFC 7208 §5.5: a DNS error in the PTR lookup makes `ptr` not match, and one
            // while validating a name it gave skips that name.
            return makeRR(domain, rawType, herrno: fromPTR || type == .ptr ? HOST_NOT_FOUND : TRY_AGAIN)
        }
    }

    private func makeRR(_ domain: UnsafePointer<CChar>, _ rawType: UInt32, herrno: Int32, records: [[UInt8]] = [],
                        ttl: UInt32 = 0) -> UnsafeMutablePointer<SPF_dns_rr_t>? {
        guard let rr = SPF_dns_rr_new_init(dns, domain, ns_type(rawValue: rawType), Int32(clamping: ttl), herrno) else { return nil }
        var count: Int32 = 0
        for bytes in records {
            guard SPF_dns_rr_buf_realloc(rr, count, bytes.count) == SPF_E_SUCCESS, let slot = rr.pointee.rr[Int(count)] else { break }
            bytes.withUnsafeBytes { UnsafeMutableRawPointer(slot).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            count += 1
        }
        rr.pointee.num_rr = count
        return rr
    }

    /// Fetches, selects and compiles the SPF record of the request's current domain.
    fileprivate func getRecord(_ request: UnsafeMutablePointer<SPF_request_t>, _ response: UnsafeMutablePointer<SPF_response_t>,
                               _ recordp: UnsafeMutablePointer<UnsafeMutablePointer<SPF_record_t>?>) -> SPF_errcode_t {
        recordp.pointee = nil
        guard let state = run, let current = request.pointee.cur_dom else { return SPF_E_INTERNAL_ERROR }
        let asked = Array(UnsafeRawBufferPointer(start: current, count: strlen(current)))

        func compiled(_ text: [UInt8], mechanisms: Int) -> UnsafeMutablePointer<SPF_record_t>? {
            var record: UnsafeMutablePointer<SPF_record_t>?
            let code = String(decoding: text, as: UTF8.self).withCString { SPF_record_compile(server, response, &record, $0) }
            guard code == SPF_E_SUCCESS, let record, Int(record.pointee.num_mech) == mechanisms else {
                if let record { SPF_record_free(record) }
                return nil
            }
            return record
        }

        var domainName: DNSName?
        switch state.resolve(asked) {
        case .chunk(let index):
            // The next part of a record too long to compile whole: no lookup of its own.
            let text = state.chunks[index]
            guard let record = compiled(text, mechanisms: LibSPF2.mechanismCount(text)) else {
                state.force(.permerror, "SPF record is too complex to evaluate")
                return SPF_E_BIG_MECH
            }
            recordp.pointee = record
            return SPF_E_SUCCESS
        case .alias(let alias): domainName = alias.name
        case .plain(let plain): domainName = plain
        }
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

        if state.forced != nil || state.missing != nil { return fail(.permerror, "evaluation stopped", SPF_E_DNS_ERROR) }
        if !topLevel {
            guard state.countLookup() else { return fail(.permerror, "lookup limit", SPF_E_BIG_DNS) }
        }
        guard let domainName, case let domainText = domainName.macroText,
              SPFQuery.domainProblem(String(decoding: domainText, as: UTF8.self)) == nil else {
            if !topLevel { state.countVoid(SPFAnswer(status: .nameError)) }
            return fail(.none, "the domain cannot be asked", SPF_E_NOT_SPF)
        }
        guard let answer = state.answer(DNSQuestion(domainName, .txt)) else { return fail(.temperror, "waiting for DNS", SPF_E_DNS_ERROR) }
        if let forced = state.forced { return fail(forced.0, forced.1, SPF_E_DNS_ERROR) }
        if !topLevel { state.countVoid(answer) }
        if state.forced != nil { return fail(.permerror, "void lookup limit", SPF_E_BIG_DNS) }
        switch answer.status {
        case .timeout, .serverFailure:
            return fail(.temperror, "DNS failure fetching the SPF record of \(domainName)", SPF_E_DNS_ERROR)
        case .nameError:
            return fail(.none, "\(domainName) does not exist", SPF_E_NOT_SPF)
        case .success:
            break
        }
        let record: SPFRecord
        switch answer.spf {
        case .none: return fail(.none, "\(domainName) publishes no SPF record", SPF_E_NOT_SPF)
        case .multiple: return fail(.permerror, "\(domainName) publishes more than one SPF record", SPF_E_MULTIPLE_RECORDS)
        case .invalid(let why): return fail(.permerror, "SPF record of \(domainName): \(why)", SPF_E_SYNTAX)
        case .record(let r): record = r
        }
        state.records.append((domainText, record))
        let rewritten = state.rewrite(record, domain: domainText)
        if state.missing != nil { return fail(.temperror, "waiting for DNS", SPF_E_DNS_ERROR) }
        // Compile the whole; when it does not fit, `chain` asks again for its parts.
        var kept: (text: [UInt8], record: UnsafeMutablePointer<SPF_record_t>)?
        let first = state.chain(rewritten) { text, mechanisms in
            guard let record = compiled(text, mechanisms: mechanisms) else { return false }
            if let old = kept { SPF_record_free(old.record) }
            kept = (text, record)
            return true
        }
        if let k = kept, k.text != first {
            SPF_record_free(k.record)
            kept = nil
        }
        guard let result = kept?.record ?? compiled(first, mechanisms: LibSPF2.mechanismCount(first)) else {
            return fail(.permerror, "SPF record of \(domainName) is too complex to evaluate", SPF_E_BIG_MECH)
        }
        recordp.pointee = result
        return SPF_E_SUCCESS
    }

    /// What libspf2 is handed for a record's exp= (Backstop keeps the text itself), and its
    /// own default explanation: two constants, so the final response tells them apart.
    static let expPlaceholder = "explanation"
    static let defaultExplanation = "default"

    /// Mechanisms in a record text Backstop wrote (every term but exp= counts; redirect= is one for libspf2).
    static func mechanismCount(_ text: [UInt8]) -> Int {
        text.split(separator: 0x20).dropFirst().filter { !($0.starts(with: Array("exp=".utf8))) }.count
    }

    /// The explanation TXT record (RFC 7208 §6.2). Kept for Backstop's own expansion; the
    /// text handed back to libspf2 is only a placeholder.
    fileprivate func getExplanation(_ domain: UnsafePointer<CChar>, _ bufp: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>,
                                    _ lengthp: UnsafeMutablePointer<Int>) -> SPF_errcode_t {
        guard let state = run else { return SPF_E_DNS_ERROR }
        let asked = Array(UnsafeRawBufferPointer(start: domain, count: strlen(domain)))
        guard case .alias(let alias) = state.resolve(asked), let name = alias.name, state.forced == nil else { return SPF_E_DNS_ERROR }
        guard let answer = state.answer(DNSQuestion(name, .txt)), answer.status == .success,
              let text = answer.explanation else { return SPF_E_DNS_ERROR }
        state.explanationName = name
        state.explanationText = text
        state.explanationOwner = alias.owner
        let placeholder = Array(LibSPF2.expPlaceholder.utf8) + [0]
        if lengthp.pointee < placeholder.count || bufp.pointee == nil {
            guard let grown = realloc(bufp.pointee, placeholder.count) else { return SPF_E_NO_MEMORY }
            bufp.pointee = grown.assumingMemoryBound(to: CChar.self)
            lengthp.pointee = placeholder.count
        }
        placeholder.withUnsafeBytes { UnsafeMutableRawPointer(bufp.pointee!).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return SPF_E_SUCCESS
    }
}

// The C entry points libspf2 calls. They find their LibSPF2 through the DNS layer's hook.

private let spfLookup: SPF_dns_lookup_t = { dns, domain, type, _ in
    guard let engine = LibSPF2.from(dns), let domain else { return nil }
    return engine.lookup(domain, type.rawValue)
}

private let spfGetRecord: SPF_dns_get_spf_t = { server, request, response, recordp in
    guard let server, let request, let response, let recordp,
          let engine = LibSPF2.from(server.pointee.resolver) else { return SPF_E_INTERNAL_ERROR }
    return engine.getRecord(request, response, recordp)
}

private let spfGetExplanation: SPF_dns_get_exp_t = { server, domain, bufp, lengthp in
    guard let server, let domain, let bufp, let lengthp,
          let engine = LibSPF2.from(server.pointee.resolver) else { return SPF_E_INTERNAL_ERROR }
    return engine.getExplanation(domain, bufp, lengthp)
}
