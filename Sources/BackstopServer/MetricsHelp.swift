// One line of help per metric, for the `# HELP` lines of /metrics (swift-metrics has no
// place for help text, so the endpoint adds them when it renders), plus the process and
// build metrics every Prometheus exporter offers. The same texts are in docs/metrics.md; a
// test keeps the two in step. It records nothing itself.

import BackstopCore
import Foundation

enum MetricsHelp {
    static let texts: [String: String] = [
        "backstop_build_info": "always 1; the running version in its label",
        "backstop_requests_total": "requests answered, by stage and final answer (reject includes 5NN replies, defer 4NN and DEFER_IF_*)",
        "backstop_request_duration_seconds": "time from a complete request to its answer, buckets from 50 µs to 10 s",
        "backstop_deadline_expiries_total": "requests answered by a check's fail action because policy.deadline passed",
        "backstop_protocol_errors_total": "connections closed for a protocol error",
        "backstop_read_timeouts_total": "connections closed because a started request was not completed within server.read_timeout",
        "backstop_connections_open": "connections open now, policy and metrics together (they share server.max_connections)",
        "backstop_connections_accepted_total": "connections accepted (policy and metrics)",
        "backstop_connections_rejected_total": "connections closed at once",
        "backstop_config_generation": "1 at start, +1 for every reload that puts a new configuration in force (also one counted as failed because a table kept its last good version)",
        "backstop_config_reloads_total": "SIGHUP reloads; failure when the configuration or a table it re-reads could not be loaded (the last good version stays in force)",
        "backstop_check_duration_seconds": "time each check took, including waiting (SPF, PostgreSQL)",
        "backstop_recipients_lookups_total": "recipient lookups by result (known, unknown, override, not_our_domain, no_recipient, no_table)",
        "backstop_recipients_table_entries": "size of the table in force",
        "backstop_recipients_last_reload_timestamp_seconds": "when the table in force was loaded",
        "backstop_recipients_reload_failures_total": "edits refused (the old table stayed)",
        "backstop_spf_results_total": "SPF results the check acted on (cache hits included)",
        "backstop_spf_evaluations_total": "evaluations made by worker processes (outcome cache misses)",
        "backstop_spf_evaluation_duration_seconds": "time from submission to a worker's answer (queue wait and DNS included)",
        "backstop_spf_result_cache_total": "the outcome cache (keyed on client, domain and only what the records read); hit ratio = hit / (hit + miss)",
        "backstop_spf_dns_cache_total": "the server's one DNS answer cache",
        "backstop_spf_dns_queries_total": "questions sent to the resolvers",
        "backstop_spf_queue_depth": "evaluations waiting for a worker, in all workers' queues together",
        "backstop_spf_queue_full_total": "evaluations refused (temperror) because the queue was full",
        "backstop_spf_worker_restarts_total": "SPF worker processes replaced: timeout, crashed, exited, protocol, spawn_failed, retired",
        "backstop_test_mode_refusals_total": "refusals (and HOLD or DISCARD) test mode logged (and answered with the due header or WARN) instead of sending",
        "backstop_ratelimit_hits_total": "requests the rule counted against its key, whether admitted, refused or failed (the store did not answer)",
        "backstop_ratelimit_refusals_total": "requests refused by a rule",
        "backstop_ratelimit_keys": "keys that hold state: in the memory store, or rows in PostgreSQL (published at each sweep)",
        "backstop_ratelimit_evictions_total": "keys evicted because max_keys was reached",
        "backstop_ratelimit_store_failures_total": "store errors and timeouts (fail action used)",
        "backstop_ratelimit_postgres_failures_total": "PostgreSQL statements that failed",
        "backstop_ratelimit_overrides": "entries of a rule's overrides table in force",
        "backstop_ratelimit_overrides_reload_failures_total": "overrides edits that could not be loaded (the last good version stayed)",
        "backstop_batv_signed_total": "envelope senders signed for the batv-sign map",
        "backstop_batv_stripped_total": "tagged recipients unwrapped for the batv-strip map (valid tag, known mailbox)",
        "backstop_batv_verified_total": "recipients at RCPT whose tag was valid",
        "backstop_batv_refused_total": "recipients at RCPT refused for their tag (counted in test mode too)",
        "backstop_socketmap_requests_total": "socketmap lookups answered, by map and reply",
    ]

    /// The registry's text with a `# HELP` line before each `# TYPE` line that has help,
    /// followed by the build and process metrics.
    static func render(_ registry: [UInt8], startTime: Double) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(registry.count + 4096)
        for line in registry.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: Array("# TYPE ".utf8)) {
                let name = String(decoding: line.dropFirst(7).prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)
                if let help = texts[name] { out += Array("# HELP \(name) \(help)\n".utf8) }
            }
            out += line
            out.append(UInt8(ascii: "\n"))
        }
        if out.last == UInt8(ascii: "\n"), out.dropLast().last == UInt8(ascii: "\n") { out.removeLast() }
        out += Array(standardMetrics(startTime: startTime).utf8)
        return out
    }

    /// backstop_build_info and the process_* metrics, read from /proc at each scrape.
    static func standardMetrics(startTime: Double) -> String {
        var text = """
        # HELP backstop_build_info \(texts["backstop_build_info"] ?? "")
        # TYPE backstop_build_info gauge
        backstop_build_info{version="\(BuildInfo.version)"} 1
        # HELP process_start_time_seconds start time of the process since the Unix epoch
        # TYPE process_start_time_seconds gauge
        process_start_time_seconds \(startTime)

        """
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        // /proc/self/stat: the fields after the command name (which may hold spaces) start at 3.
        if let stat = try? RegularFile.read("/proc/self/stat", maxBytes: 4096), let close = stat.lastIndex(of: UInt8(ascii: ")")) {
            let fields = stat[(close + 2)...].split(separator: UInt8(ascii: " ")).map { Double(String(decoding: $0, as: UTF8.self)) ?? 0 }
            if fields.count > 21, ticks > 0 {
                text += "# HELP process_cpu_seconds_total user and system CPU time spent\n# TYPE process_cpu_seconds_total counter\n"
                text += "process_cpu_seconds_total \((fields[11] + fields[12]) / ticks)\n"
                text += "# HELP process_virtual_memory_bytes virtual memory size\n# TYPE process_virtual_memory_bytes gauge\n"
                text += "process_virtual_memory_bytes \(Int(fields[20]))\n"
                text += "# HELP process_resident_memory_bytes resident memory size\n# TYPE process_resident_memory_bytes gauge\n"
                text += "process_resident_memory_bytes \(Int(fields[21] * page))\n"
            }
        }
        if let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            text += "# HELP process_open_fds open file descriptors\n# TYPE process_open_fds gauge\nprocess_open_fds \(fds.count)\n"
        }
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            text += "# HELP process_max_fds the open-file limit\n# TYPE process_max_fds gauge\nprocess_max_fds \(limit.rlim_cur)\n"
        }
        return text
    }
}
