#!/usr/bin/env bash
# The reproducible benchmark of issue 7 (results and how to read them: docs/benchmarks.md).
# Builds the release binary and the reference tools, generates the data (a 1,000,000-entry
# recipient table, one configuration per scenario, a DNS zone), then measures Backstop and
# the reference server refserver IN THE SAME RUN, interleaved, and prints a results table:
# throughput ratios, p99 latency, RSS, start-up time. Everything runs on loopback and is
# stopped on exit. It does not judge a single absolute number: the machine is shared.
#
#   bench/run.sh [--quick] [--no-build] [--rounds N] [--duration S] [--out DIR] [--only LIST] [--threads N] [--spf-workers N]
#
#   --quick      short runs (3 s, 1 round, 200,000 rate-limit keys) for trying the script out
#   --no-build   use the release binary already built
#   --rounds N   measured rounds per scenario, Backstop and refserver alternating (default 3)
#   --duration S seconds measured per run (default 10, after 2 s of warm-up)
#   --out DIR    keep raw results here (default .build/bench/<date>)
#   --only LIST  comma-separated scenarios: checks, spf-warm, spf-peers, new-connection,
#                spf-cold, keys, ratelimit, example, startup (default: all of them)
#   --threads N  server.threads of the measured servers (default 0: one event loop per two cores)
#   --spf-workers N  spf.workers of the spf-warm and spf-peers servers (default: the default)
#
# Needs: swift, gcc, python3 with dnslib (Tests/Support/dns_server.py), and the policyload
# and refserver sources in ../shared/bench (or BACKSTOP_BENCH_TOOLS=dir).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS_SRC=${BACKSTOP_BENCH_TOOLS:-$ROOT/../shared/bench}
SPF_WORKERS="" THREADS=0 QUICK=0 BUILD=1 ROUNDS=3 DURATION=10 WARMUP=2 OUT="" ONLY="checks,spf-warm,spf-peers,new-connection,spf-cold,keys,ratelimit,example,startup"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --out) OUT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        --spf-workers) SPF_WORKERS=$2; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
TABLE_SIZE=1000000          # 1000 local parts x 1000 domains
KEYS_REQUESTS=1040000       # draws from 10.0.0.0/8 that give > 1,000,000 distinct clients
if [ "$QUICK" = 1 ]; then
    ROUNDS=1 DURATION=3 WARMUP=1 KEYS_REQUESTS=200000
fi
CONNS=16
OUT=${OUT:-$ROOT/.build/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

# ---- cleanup: everything started here is stopped on exit ----
PIDS=()
WORK=$(mktemp -d /tmp/backstop-bench.XXXXXX)
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    exec 7>&- 2>/dev/null || true   # closing its stdin stops the DNS server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wanted() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
log() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
record() { printf '%s\n' "$1" >> "$RESULTS"; }   # one JSON object per line

# ---- build ----
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
    # Linked as scripts/package links it: what is measured is what is installed.
    log "building the release binary (scripts/build-release)"
    scripts/build-release >&2
fi
BIN=$(swift build -c release --show-bin-path)/backstop
[ -x "$BIN" ] || { echo "no release binary at $BIN (run without --no-build)" >&2; exit 1; }
# What is measured is what is installed: a binary linked to the toolchain's shared Swift
# runtime (e.g. one built with a plain `swift build -c release`) costs more per request.
if ldd "$BIN" 2> /dev/null | grep -q libswiftCore; then
    echo "$BIN is linked to the shared Swift runtime; build it as the package does: scripts/build-release" >&2
    exit 1
fi
mkdir -p .build/bench
gcc -O2 -Wall -o .build/bench/policyload "$TOOLS_SRC/policyload.c" -lpthread
gcc -O2 -Wall -o .build/bench/refserver "$TOOLS_SRC/refserver.c" -lpthread
POLICYLOAD=$ROOT/.build/bench/policyload
REFSERVER=$ROOT/.build/bench/refserver
MIXES=$ROOT/bench/mixes

# ---- data ----
log "generating a $TABLE_SIZE-entry recipient table and the configurations in $WORK"
awk -v n="$TABLE_SIZE" 'BEGIN { for (d = 1; d <= 1000; d++) for (u = 1; u <= n / 1000; u++) printf "user%d@dom%d.bench.test OK\n", u, d }' \
    > "$WORK/recipients"
echo "trap@dom1.bench.test 550 5.7.1 Spam trap" >> "$WORK/recipients"   # spf-peers' spam-trap recipient
python3 - "$WORK/zone.json" <<'EOF'
import json, sys
record = {"TXT": "v=spf1 ip4:198.18.0.0/15 -all"}
zone = {"d%d.spf.bench.test" % i: [record] for i in range(1, 3001)}
zone["*.cold.bench.test"] = [record]
# spf-peers: five sender domains allowing the first half of 198.51.100.0/24, three without SPF.
for i in range(1, 6):
    zone["p%d.peer.bench.test" % i] = [{"TXT": "v=spf1 ip4:198.51.100.0/25 -all"}]
for i in range(1, 4):
    zone["n%d.peer.bench.test" % i] = [{"TXT": "not an SPF record"}]
json.dump(zone, open(sys.argv[1], "w"))
EOF

# config NAME PORT RCPT-CHECKS SECTION...: $WORK/NAME.toml for one scenario, with the
# sections named (recipients, ratelimit, bounces, spf) and nothing else.
config() {
    local name=$1 port=$2 rcpt=$3 data=""
    shift 3
    case " $* " in *" bounces "*) data='"bounces"' ;; esac
    {
        printf '# bench/run.sh: scenario %s\n[[listen]]\naddress = "127.0.0.1:%s"\n\n' "$name" "$port"
        printf '[server]\nthreads = %s\n\n' "$THREADS"
        printf '[log]\nlevel = "warning"\n\n[policy]\nrcpt = [%s]\ndata = [%s]\n' "$rcpt" "$data"
        for section in "$@"; do
            case $section in
                recipients) printf '\n[recipients]\ntables = ["%s/recipients"]\n' "$WORK" ;;
                ratelimit) printf '\n[ratelimit]\nmax_keys = 1000000\n\n[[ratelimit.rule]]\nname = "per_client"\nkey = "client_address"\ncount = "recipient"\nlimit = "200/1d"\naction = "DEFER 4.7.1 Rate limit exceeded, try again later"\n' ;;
                bounces) printf '\n[bounces]\nno_reply_addresses = ["@notify.bench.test"]\n' ;;
                spf) printf '\n[spf]\nresolvers = ["127.0.0.1:%s"]\n' "$DNS_PORT"
                     if [ -n "$SPF_WORKERS" ]; then printf 'workers = %s\n' "$SPF_WORKERS"; fi ;;
                spf4) printf '\n[spf]\nresolvers = ["127.0.0.1:%s"]\nworkers = 4\n' "$DNS_PORT" ;;
                persender) printf '\n[ratelimit]\n\n[[ratelimit.rule]]\nname = "per_sender"\nkey = "sender"\ncount = "recipient"\nlimit = "50/60s"\naction = "DEFER 4.7.1 Too many recipients from this sender, try again later"\n' ;;
                metrics) printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" ;;
            esac
        done
    } > "$WORK/$name.toml"
}

# ---- servers ----
start_refserver() {
    REF_PORT=$(free_port)
    "$REFSERVER" "127.0.0.1:$REF_PORT" 2>>"$OUT/refserver.log" &
    PIDS+=($!)
    python3 bench/first_answer.py wait "$REF_PORT" --timeout 10
}

# start_backstop NAME PORT [CONFIG]: runs `backstop serve` on CONFIG (default
# $WORK/NAME.toml) until it answers; sets BS_PID.
start_backstop() {
    local name=$1 port=$2 file=${3:-$WORK/$1.toml}
    "$BIN" serve -c "$file" 2>>"$OUT/backstop-$name.log" &
    BS_PID=$!
    PIDS+=($BS_PID)
    python3 bench/first_answer.py wait "$port" --timeout 120 \
        || { echo "backstop ($name) did not answer; see $OUT/backstop-$name.log" >&2; exit 1; }
}

# stop_pid PID: SIGTERM, then wait until it is gone (also for processes not started by
# this shell, e.g. by first_answer.py, which `wait` cannot wait for).
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for _ in $(seq 300); do [ -e "/proc/$1" ] || return 0; sleep 0.05; done
    kill -9 "$1" 2>/dev/null || true
}

# load SCENARIO SERVER ROUND PORT MIX [policyload options]: one measured run, recorded.
load() {
    local scenario=$1 server=$2 round=$3 port=$4 mix=$5
    shift 5
    local line
    line=$("$POLICYLOAD" -q -t "127.0.0.1:$port" -f "$mix" -c $CONNS "$@" -l "$scenario/$server" | grep '^JSON ' | cut -c6-)
    record "{\"scenario\":\"$scenario\",\"server\":\"$server\",\"round\":$round,\"run\":$line}"
    log "$scenario $server round $round: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f req/s p99=%dus errors=%d" % (r["rps"], r["p99_us"], r["errors"]))' "$line")"
}

DNS_OUT=$WORK/dns.out
dns_command() {  # sends one command to the DNS server, prints its one-line answer
    local before
    before=$(wc -l < "$DNS_OUT")
    echo "$1" >&7
    for _ in $(seq 200); do
        [ "$(wc -l < "$DNS_OUT")" -gt "$before" ] && break
        sleep 0.01
    done
    tail -n 1 "$DNS_OUT"
}

# ---- machine ----
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
    echo "mode: rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNS quick=$QUICK threads=$THREADS"
} | tee "$OUT/machine.txt" >&2

# ---- DNS server for SPF (loopback, stops when its stdin closes) ----
mkfifo "$WORK/dns.in"
python3 Tests/Support/dns_server.py --zone "$WORK/zone.json" --ttl 3600 < "$WORK/dns.in" > "$DNS_OUT" 2>>"$OUT/dns.log" &
DNS_PID=$!
PIDS+=($DNS_PID)
exec 7> "$WORK/dns.in"
for _ in $(seq 100); do [ -s "$DNS_OUT" ] && break; sleep 0.05; done
DNS_PORT=$(head -n 1 "$DNS_OUT")
log "DNS server on 127.0.0.1:$DNS_PORT"

# ---- scenario servers ----
start_refserver
CHECKS_PORT=$(free_port)
config checks "$CHECKS_PORT" '"recipients", "bounces", "ratelimit"' recipients bounces ratelimit
start_backstop checks "$CHECKS_PORT"
CHECKS_PID=$BS_PID
record "{\"rss\":\"checks_started\",\"kib\":$(rss_kib "$CHECKS_PID")}"
if wanted spf-warm || wanted spf-cold; then
    SPF_PORT=$(free_port)
    config spf "$SPF_PORT" '"recipients", "bounces", "spf", "ratelimit"' recipients bounces ratelimit spf
    start_backstop spf "$SPF_PORT"
    SPF_PID=$BS_PID
    log "warming the SPF DNS cache (3,000 domains)"
    "$POLICYLOAD" -q -t "127.0.0.1:$SPF_PORT" -f "$MIXES/spf-warm.mix" -c $CONNS -n 60000 > /dev/null
fi
if wanted spf-peers; then
    PEERS_PORT=$(free_port)
    config peers "$PEERS_PORT" '"recipients", "spf", "ratelimit"' recipients spf persender
    start_backstop peers "$PEERS_PORT"
    PEERS_PID=$BS_PID
    "$POLICYLOAD" -q -t "127.0.0.1:$PEERS_PORT" -f "$MIXES/spf-peers.mix" -c $CONNS -n 20000 > /dev/null
fi
dns_command reset > /dev/null

for round in $(seq "$ROUNDS"); do
    if wanted checks; then
        load checks refserver "$round" "$REF_PORT" "$MIXES/checks.mix" -d "$DURATION" -w "$WARMUP"
        load checks backstop "$round" "$CHECKS_PORT" "$MIXES/checks.mix" -d "$DURATION" -w "$WARMUP"
    fi
    if wanted spf-warm; then
        load spf-warm refserver "$round" "$REF_PORT" "$MIXES/spf-warm.mix" -d "$DURATION" -w "$WARMUP"
        load spf-warm backstop "$round" "$SPF_PORT" "$MIXES/spf-warm.mix" -d "$DURATION" -w "$WARMUP"
    fi
    if wanted spf-peers; then
        load spf-peers refserver "$round" "$REF_PORT" "$MIXES/spf-peers.mix" -d "$DURATION" -w "$WARMUP"
        load spf-peers backstop "$round" "$PEERS_PORT" "$MIXES/spf-peers.mix" -d "$DURATION" -w "$WARMUP"
    fi
    if wanted new-connection; then
        load new-connection refserver "$round" "$REF_PORT" "$MIXES/checks.mix" -N -d "$DURATION" -w "$WARMUP"
        load new-connection backstop "$round" "$CHECKS_PORT" "$MIXES/checks.mix" -N -d "$DURATION" -w "$WARMUP"
    fi
done
record "{\"rss\":\"checks_after_load\",\"kib\":$(rss_kib "$CHECKS_PID")}"
if wanted spf-warm; then
    record "{\"dns_queries\":\"spf-warm\",\"count\":$(dns_command count)}"
    record "{\"rss\":\"spf_after_load\",\"kib\":$(rss_kib "$SPF_PID")}"
fi
if wanted spf-peers; then
    record "{\"rss\":\"peers_after_load\",\"kib\":$(rss_kib "$PEERS_PID")}"
    stop_pid "$PEERS_PID"
fi

# Cold DNS: every request a domain never seen, the DNS server answering 10 ms late. The
# throughput is set by the queries in flight (one per connection here), not by the number
# of worker processes: the spf server (1 worker by default) and 4 workers with 16
# connections, then the spf server with 64.
if wanted spf-cold; then
    dns_command "delay 10" > /dev/null
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
    cold() {  # label, port, pid, connections
        dns_command reset > /dev/null
        local started dns_ticks spf_ticks seconds
        started=$(date +%s.%N) dns_ticks=$(cpu_ticks "$DNS_PID") spf_ticks=$(cpu_ticks "$3")
        CONNS=$4 load "$1" backstop 1 "$2" "$MIXES/spf-cold.mix" -d "$DURATION" -w "$WARMUP"
        seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
        record "{\"dns_queries\":\"$1\",\"count\":$(dns_command count),\"seconds\":$seconds,\"dns_cpu_s\":$(( $(cpu_ticks "$DNS_PID") - dns_ticks ))e-2,\"backstop_cpu_s\":$(( $(cpu_ticks "$3") - spf_ticks ))e-2}"
    }
    cold spf-cold "$SPF_PORT" "$SPF_PID" 16
    cold spf-cold-64 "$SPF_PORT" "$SPF_PID" 64
    COLD4_PORT=$(free_port)
    config cold4 "$COLD4_PORT" '"recipients", "bounces", "spf", "ratelimit"' recipients bounces ratelimit spf4
    start_backstop cold4 "$COLD4_PORT"
    COLD4_PID=$BS_PID
    cold spf-cold-4-workers "$COLD4_PORT" "$COLD4_PID" 16
    stop_pid "$COLD4_PID"
    dns_command "delay 0" > /dev/null
fi
[ -n "${SPF_PID:-}" ] && stop_pid "$SPF_PID"

# 1,000,000 rate-limit keys on top of the 1,000,000-entry table (the checks server).
if wanted keys; then
log "driving $KEYS_REQUESTS requests from random 10.0.0.0/8 clients into the checks server"
load keys-fill backstop 1 "$CHECKS_PORT" "$MIXES/ratelimit-keys.mix" -n "$KEYS_REQUESTS"
record "{\"rss\":\"checks_table_and_keys\",\"kib\":$(rss_kib "$CHECKS_PID")}"
fi
stop_pid "$CHECKS_PID"

# Rate limits alone (issue 5): RSS before and after the same 1,000,000 keys.
if wanted ratelimit; then
RL_PORT=$(free_port)
METRICS_PORT=$(free_port)   # only here: its gauge says how many keys the store holds
config ratelimit "$RL_PORT" '"ratelimit"' ratelimit metrics
start_backstop ratelimit "$RL_PORT"
sleep 1
record "{\"rss\":\"ratelimit_idle\",\"kib\":$(rss_kib "$BS_PID")}"
load keys-fill-ratelimit backstop 1 "$RL_PORT" "$MIXES/ratelimit-keys.mix" -n "$KEYS_REQUESTS"
sleep 11   # the store publishes its key count in its sweep, every 10 s
record "{\"rss\":\"ratelimit_keys\",\"kib\":$(rss_kib "$BS_PID")}"
keys=$(python3 -c 'import sys, urllib.request
for line in urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode().splitlines():
    if line.startswith("backstop_ratelimit_keys"): print(int(float(line.split()[-1])))' "$METRICS_PORT" | head -n 1)
record "{\"ratelimit_keys_held\":${keys:-null}}"
stop_pid "$BS_PID"
fi

# Idle with the example configuration (its tables, another port).
if wanted example; then
EX_PORT=$(free_port)
mkdir -p "$WORK/example"
# The files the example configuration names beside it (its tables and overrides).
cp examples/recipients examples/ratelimit-overrides "$WORK/example/"
sed "s/^address = \"127.0.0.1:10033\"/address = \"127.0.0.1:$EX_PORT\"/" examples/backstop.toml > "$WORK/example/backstop.toml"
start_backstop example "$EX_PORT" "$WORK/example/backstop.toml"
sleep 2
record "{\"rss\":\"example_idle\",\"kib\":$(rss_kib "$BS_PID")}"
stop_pid "$BS_PID"
fi

# Start-up to the first answer with the 1,000,000-entry table (issue 7), and the table's
# own load time and memory (issue 4): the recipients check alone, log level info.
wanted startup && for attempt in 1 2 3; do
    TABLE_PORT=$(free_port)   # a fresh port each time: no answer from the previous server
    config table "$TABLE_PORT" '"recipients"' recipients
    sed -i 's/^level = "warning"/level = "info"/' "$WORK/table.toml"
    : > "$OUT/backstop-table.log"
    secs=$(python3 bench/first_answer.py start "$TABLE_PORT" --log "$OUT/backstop-table.log" --pidfile "$WORK/table.pid" -- "$BIN" serve -c "$WORK/table.toml")
    pid=$(cat "$WORK/table.pid")
    PIDS+=($pid)
    sleep 1
    loaded=$(grep -o 'seconds=[0-9.]*' "$OUT/backstop-table.log" | head -n 1 | cut -d= -f2)
    record "{\"startup\":$attempt,\"first_answer_s\":$secs,\"table_load_s\":${loaded:-null},\"kib\":$(rss_kib "$pid")}"
    log "start-up $attempt: first answer after ${secs}s (table loaded in ${loaded:-?}s), RSS $(rss_kib "$pid") KiB"
    stop_pid "$pid"
done

record "{\"load_average_after\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
python3 bench/summarise.py "$RESULTS" "$OUT/machine.txt" | tee "$OUT/summary.md"
log "raw results in $OUT"
