// The SPF metrics, made once per verifier (not per request). Listed in docs/metrics.md.
// Counting only: nothing here decides.

import BackstopCore
import Metrics

struct SPFMetrics: Sendable {
    /// Evaluations completed by workers, by `SPFResult.index`.
    let evaluations: [Counter]
    /// Results that decided a request (cache hits included), by `SPFResult.index`.
    let results: [Counter]
    let dnsQueries = Counter(label: "backstop_spf_dns_queries_total")
    let dnsCacheHits = Counter(label: "backstop_spf_dns_cache_total", dimensions: [("result", "hit")])
    let dnsCacheMisses = Counter(label: "backstop_spf_dns_cache_total", dimensions: [("result", "miss")])
    let outcomeCacheHits = Counter(label: "backstop_spf_result_cache_total", dimensions: [("cache", "outcome"), ("result", "hit")])
    let outcomeCacheMisses = Counter(label: "backstop_spf_result_cache_total", dimensions: [("cache", "outcome"), ("result", "miss")])
    let queueFull = Counter(label: "backstop_spf_queue_full_total")
    /// backstop_spf_queue_depth: evaluations waiting for a worker in every slot of every
    /// verifier (a reload's old one drains beside the new one), one count for them all.
    let queueDepth = SPFMetrics.queued
    static let queued = GaugedCount(Gauge(label: "backstop_spf_queue_depth"))
    let duration = Metrics.Timer(label: "backstop_spf_evaluation_duration_seconds", preferredDisplayUnit: .seconds)
    let workerRestarts: [SPFRestartReason: Counter]

    init() {
        evaluations = SPFResult.allCases.map { Counter(label: "backstop_spf_evaluations_total", dimensions: [("result", $0.rawValue)]) }
        results = SPFResult.allCases.map { Counter(label: "backstop_spf_results_total", dimensions: [("result", $0.rawValue)]) }
        var restarts: [SPFRestartReason: Counter] = [:]
        for reason in SPFRestartReason.allCases {
            restarts[reason] = Counter(label: "backstop_spf_worker_restarts_total", dimensions: [("reason", reason.rawValue)])
        }
        workerRestarts = restarts
    }
}

/// Why a worker process was replaced (the `reason` label of backstop_spf_worker_restarts_total).
public enum SPFRestartReason: String, CaseIterable, Sendable {
    /// Killed: it owed an answer past half the evaluation deadline, or did not read what it
    /// was sent (SPFWorkerConnection.writeBudget) in that time.
    case timeout
    /// Died on a signal (a crash inside libspf2, a resource limit, killed from outside).
    case crashed
    /// Exited on its own (cannot start, cannot switch to worker_user, ...).
    case exited
    /// Sent something the protocol does not allow; killed.
    case `protocol`
    /// Could not be started.
    case spawnFailed = "spawn_failed"
    /// Replaced after its share of evaluations (not a fault).
    case retired
}
