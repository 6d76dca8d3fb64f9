#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh (results.jsonl) into the Markdown table of
docs/benchmarks.md: every issue-7 and issue-11 target with the measured number, the ratio to refserver
in the same run, and met / not met. It measures nothing itself.

    summarise.py results.jsonl [machine.txt]

Throughput ratios are taken per round (Backstop's run divided by refserver's run just
before it) and the median of the rounds is reported; p99 is the worst round's.
"""

import json
import statistics
import sys

MB = 1000 * 1000  # targets are in MB (10^6 octets); VmRSS is in KiB


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    if len(sys.argv) > 2:
        print("```")
        print(open(sys.argv[2]).read().rstrip())
        print("```\n")
    runs = {}
    for row in rows:
        if "run" in row:
            runs.setdefault((row["scenario"], row["server"]), {})[row["round"]] = row["run"]
    rss = {row["rss"]: row["kib"] * 1024 for row in rows if "rss" in row}
    dns = {row["dns_queries"]: row["count"] for row in rows if "dns_queries" in row}
    dns_seconds = {row["dns_queries"]: row.get("seconds") for row in rows if "dns_queries" in row}
    startups = [row for row in rows if "startup" in row]
    held = next((row["ratelimit_keys_held"] for row in rows if "ratelimit_keys_held" in row), None)

    out = []
    def line(target, measured, ratio, goal, met):
        out.append("| %s | %s | %s | %s | %s |" % (target, measured, ratio, goal, "met" if met else "**NOT met**"))

    def throughput(scenario, share, p99_limit):
        ours, ref = runs.get((scenario, "backstop"), {}), runs.get((scenario, "refserver"), {})
        rounds = sorted(set(ours) & set(ref))
        if not rounds:
            return
        ratios = [ours[r]["rps"] / ref[r]["rps"] for r in rounds if ref[r]["rps"]]
        ratio = statistics.median(ratios)
        rps = statistics.median(ours[r]["rps"] for r in rounds)
        ref_rps = statistics.median(ref[r]["rps"] for r in rounds)
        p99 = max(ours[r]["p99_us"] for r in rounds)
        ref_p99 = max(ref[r]["p99_us"] for r in rounds)
        errors = sum(ours[r]["errors"] for r in rounds)
        measured = "%.0f req/s, p99 %.2f ms (refserver %.0f req/s, p99 %.2f ms); errors %d" % (
            rps, p99 / 1000, ref_rps, ref_p99 / 1000, errors)
        ratio_text = "%.0f %% (rounds: %s)" % (100 * ratio, ", ".join("%.0f %%" % (100 * x) for x in ratios))
        goal = "≥ %d %% of refserver" % (100 * share) + (", p99 ≤ %g ms" % (p99_limit / 1000) if p99_limit else "")
        met = ratio >= share and (p99_limit is None or p99 <= p99_limit) and errors == 0
        line(scenario, measured, ratio_text, goal, met)

    out.append("| scenario / target | measured (median of rounds; p99 worst round) | Backstop / refserver | target | |")
    out.append("|---|---|---|---|---|")
    throughput("checks", 0.60, 1000)
    throughput("spf-peers", 0.60, 1000)
    throughput("spf-warm", 0.25, None)
    throughput("new-connection", 0.60, None)
    for scenario, label in [("spf-cold", "spf.workers as run, 16 connections"), ("spf-cold-64", "spf.workers as run, 64 connections"),
                            ("spf-cold-4-workers", "4 workers, 16 connections")]:
        cold = runs.get((scenario, "backstop"), {}).get(1)
        if not cold:
            continue
        queries = dns.get(scenario)
        seconds = dns_seconds.get(scenario)
        qps = " (DNS server: %.0f queries/s over the run)" % (queries / seconds) if queries and seconds else ""
        cpu = next((row for row in rows if row.get("dns_queries") == scenario), {})
        if "dns_cpu_s" in cpu and seconds:
            qps += "; CPU busy: DNS server %.0f %% of a core, Backstop %.0f %%" % (
                100 * cpu["dns_cpu_s"] / seconds, 100 * cpu["backstop_cpu_s"] / seconds)
        line("spf-cold, DNS answers after 10 ms (%s)" % label, "%.0f req/s, p99 %.2f ms%s; errors %d" % (
            cold["rps"], cold["p99_us"] / 1000, qps, cold["errors"]), "—", "set by queries in flight: state it", True)
    if "spf-warm" in dns:
        out.append("| (spf-warm: DNS queries during the measured rounds) | %d | | 0 expected: the cache is warm | |" % dns["spf-warm"])

    def memory(name, key, limit_mb):
        if key in rss:
            line(name, "%.0f MB" % (rss[key] / MB), "—", "< %d MB" % limit_mb, rss[key] < limit_mb * MB)
    memory("RSS idle, example configuration", "example_idle", 50)
    memory("RSS, checks server after the load runs (1M table, ~100k keys)", "checks_after_load", 400)
    memory("RSS, 1M-entry table + 1M rate-limit keys", "checks_table_and_keys", 400)
    if startups:
        first = statistics.median(s["first_answer_s"] for s in startups)
        line("start-up to first answer, 1M-entry table", "%.2f s (runs: %s)" % (
            first, ", ".join("%.2f" % s["first_answer_s"] for s in startups)), "—", "< 3 s", first < 3)
        loads = [s["table_load_s"] for s in startups if s["table_load_s"] is not None]
        if loads:
            load = statistics.median(loads)
            line("issue 4: 1M addresses load time", "%.2f s" % load, "—", "< 2 s", load < 2)
        table_rss = statistics.median(s["kib"] * 1024 for s in startups)
        line("issue 4: RSS with the 1M-entry table (whole process)", "%.0f MB" % (table_rss / MB), "—", "< 200 MB",
             table_rss < 200 * MB)
    if "ratelimit_keys" in rss:
        idle = rss.get("ratelimit_idle", 0)
        line("issue 5: RSS with 1M rate-limit keys (whole process)", "%.0f MB (%.0f MB idle before, +%.0f MB; keys held: %s)" % (
            rss["ratelimit_keys"] / MB, idle / MB, (rss["ratelimit_keys"] - idle) / MB, "?" if held is None else "{:,}".format(held)), "—", "< 150 MB",
            rss["ratelimit_keys"] < 150 * MB)
    print("\n".join(out))
    fills = [(s, r) for (s, server), rs in runs.items() if s.startswith("keys-fill") for r in rs.values()]
    for scenario, run in fills:
        print("\n%s: %d requests at %.0f req/s, actions %s" % (scenario, run["ok"], run["rps"], json.dumps(run["actions"])))
    for (scenario, server), rs in sorted(runs.items()):
        for r, run in sorted(rs.items()):
            if not scenario.startswith("keys-fill"):
                print("%s %s round %d: %.0f req/s p50 %d us p99 %d us p99.9 %d us errors %d machine busy %.0f %% actions %s" % (
                    scenario, server, r, run["rps"], run["p50_us"], run["p99_us"], run["p999_us"], run["errors"],
                    run["machine_busy_pct"], json.dumps(run["actions"])))


if __name__ == "__main__":
    main()
