#!/usr/bin/env bash
# Instructions per request, and where they go, for one benchmark scenario: runs the release
# binary under valgrind's callgrind (one event loop thread, so the count is the whole
# server's), sends a warm-up and then a fixed number of requests of the scenario's mix,
# and prints total instructions / requests and the top functions (self and inclusive).
# Instruction counts do not vary with the machine's load, unlike req/s; they do not show
# time lost to context switches and cache misses either (docs/benchmarks.md uses perf for that).
#
#   bench/profile.sh checks|spf-warm|spf-peers [REQUESTS [WARMUP]]   (defaults 24000, 12000; build first, as run.sh does:
#       scripts/build-release)
#   bench/profile.sh spf-worker [EVALUATIONS]   an SPF worker's instructions per evaluation
#   bench/profile.sh --cpu [--threads N] checks|spf-warm|spf-peers
#       no valgrind: the server as run.sh runs it (server.threads = N, default 0), 3 s of load
#       after the warm-up, and the CPU time per request of the server (user, kernel), of its
#       SPF workers (its children) and of policyload, from /proc/PID/stat; then refserver's
#
# The server-side scenarios count the server process only: SPF workers are other processes.
# spf-worker runs `backstop spf-worker --bench N` (N evaluations from a cached DNS answer,
# through the same code a worker runs per frame: decode, libspf2, encode the answer) under
# callgrind, counting only inside that per-frame function, and divides by N.
# Uses a 1,000,000-entry recipient table like run.sh; valgrind 3.19 cannot read the Swift
# binary's DWARF 5, so a copy without debug sections is profiled (symbols stay).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CPU=0
THREADS=0
if [ "${1:-}" = --cpu ]; then CPU=1; shift; fi
if [ "${1:-}" = --threads ]; then THREADS=$2; shift 2; fi
SCENARIO=${1:?usage: profile.sh [--cpu] checks|spf-warm|spf-peers|spf-worker [REQUESTS]}
REQUESTS=${2:-24000}
WARMUP=${3:-12000}
cd "$ROOT"
BIN=$(swift build -c release --show-bin-path)/backstop
# What is measured is what is installed: a binary linked to the toolchain's shared Swift
# runtime (e.g. one built with a plain `swift build -c release`) costs more per request.
if ldd "$BIN" 2> /dev/null | grep -q libswiftCore; then
    echo "$BIN is linked to the shared Swift runtime; build it as the package does: scripts/build-release" >&2
    exit 1
fi
POLICYLOAD=$ROOT/.build/bench/policyload
mkdir -p "$ROOT/.build/bench"
[ -x "$POLICYLOAD" ] || gcc -O2 -Wall -o "$POLICYLOAD" ../shared/bench/policyload.c -lpthread

if [ "$SCENARIO" = spf-worker ]; then
    count=${2:-2000}
    tmp=$(mktemp -d /tmp/backstop-profile.XXXXXX)
    objcopy --strip-debug "$BIN" "$tmp/backstop"
    valgrind --tool=callgrind --toggle-collect='*benchmarkFrame*' --callgrind-out-file="$tmp/out.$count" \
        "$tmp/backstop" spf-worker --bench "$count" 2>/dev/null
    total=$(callgrind_annotate "$tmp/out.$count" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "spf-worker: $(( total / count )) instructions per evaluation ($count evaluations of \"v=spf1 ip4:198.18.0.0/15 -all\")"
    callgrind_annotate "$tmp/out.$count" | grep -E '^ *[0-9,]+ +\(' | sed -n '2,21p' | cut -c1-180
    rm -rf "$tmp"
    exit 0
fi

WORK=$(mktemp -d /tmp/backstop-profile.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    exec 7>&- 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

awk 'BEGIN { for (d = 1; d <= 1000; d++) for (u = 1; u <= 1000; u++) printf "user%d@dom%d.bench.test OK\n", u, d }' > "$WORK/recipients"
objcopy --strip-debug "$BIN" "$WORK/backstop"
PORT=$(free_port)
echo "trap@dom1.bench.test 550 5.7.1 Spam trap" >> "$WORK/recipients"
RCPT='"recipients", "bounces", "ratelimit"'
SPF=""
if [ "$SCENARIO" = spf-warm ] || [ "$SCENARIO" = spf-peers ]; then
    python3 -c '
import json, sys
record = {"TXT": "v=spf1 ip4:198.18.0.0/15 -all"}
zone = {"d%d.spf.bench.test" % i: [record] for i in range(1, 3001)}
for i in range(1, 6):
    zone["p%d.peer.bench.test" % i] = [{"TXT": "v=spf1 ip4:198.51.100.0/25 -all"}]
for i in range(1, 4):
    zone["n%d.peer.bench.test" % i] = [{"TXT": "not an SPF record"}]
json.dump(zone, open(sys.argv[1], "w"))' "$WORK/zone.json"
    mkfifo "$WORK/dns.in"
    python3 Tests/Support/dns_server.py --zone "$WORK/zone.json" --ttl 3600 < "$WORK/dns.in" > "$WORK/dns.out" &
    PIDS+=($!)
    exec 7> "$WORK/dns.in"
    for _ in $(seq 100); do [ -s "$WORK/dns.out" ] && break; sleep 0.05; done
    RCPT='"recipients", "bounces", "spf", "ratelimit"'
    [ "$SCENARIO" = spf-peers ] && RCPT='"recipients", "spf", "ratelimit"'
    # Outcomes kept for the whole run: callgrind slows the server ~50 times, and the
    # default result_cache_ttl (60 s) would expire in the middle of the measured requests.
    SPF=$(printf '[spf]\nresolvers = ["127.0.0.1:%s"]\nresult_cache_ttl = "1h"' "$(head -n 1 "$WORK/dns.out")")
fi
cat > "$WORK/backstop.toml" <<EOF
[[listen]]
address = "127.0.0.1:$PORT"
[server]
threads = $([ "$CPU" = 1 ] && echo "$THREADS" || echo 1)
[log]
level = "warning"
[policy]
rcpt = [$RCPT]
data = ["bounces"]
[recipients]
tables = ["$WORK/recipients"]
[ratelimit]
max_keys = 1000000
[[ratelimit.rule]]
name = "$([ "$SCENARIO" = spf-peers ] && echo per_sender || echo per_client)"
key = "$([ "$SCENARIO" = spf-peers ] && echo sender || echo client_address)"
count = "recipient"
limit = "$([ "$SCENARIO" = spf-peers ] && echo 50/60s || echo 200/1d)"
action = "DEFER 4.7.1 Rate limit exceeded, try again later"
[bounces]
no_reply_addresses = ["@notify.bench.test"]
$SPF
EOF
if [ "$CPU" = 1 ]; then
    "$WORK/backstop" serve -c "$WORK/backstop.toml" 2> "$WORK/server.log" &
    SERVER=$!
    PIDS+=($SERVER)
    python3 bench/first_answer.py wait "$PORT" --timeout 300
    "$POLICYLOAD" -q -t "127.0.0.1:$PORT" -f "bench/mixes/$SCENARIO.mix" -c 16 -n "$WARMUP" > /dev/null
    REFSERVER=$ROOT/.build/bench/refserver
    [ -x "$REFSERVER" ] || gcc -O2 -Wall -o "$REFSERVER" ../shared/bench/refserver.c -lpthread
    REF_PORT=$(free_port)
    "$REFSERVER" "127.0.0.1:$REF_PORT" 2> /dev/null &
    PIDS+=($!)
    REF=$!
    sleep 0.5
    ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }   # user and kernel, in clock ticks
    children() {  # the same over PID's children (SPF workers): the live ones, and those it reaped
        local u k child
        read -r u k < <(awk '{print $16, $17}' "/proc/$1/stat")
        for child in $(pgrep -P "$1" || true); do read -r cu ck < <(ticks "$child" 2>/dev/null || echo "0 0"); u=$((u + cu)); k=$((k + ck)); done
        echo "$u $k"
    }
    cpu() {  # NAME PID PORT: 3 s measured inside a 6 s load
        "$POLICYLOAD" -q -s 2 -t "127.0.0.1:$3" -f "bench/mixes/$SCENARIO.mix" -c 16 -d 6 -w 1 > "$WORK/load.json" &
        local load=$! hz
        hz=$(getconf CLK_TCK)
        sleep 2
        read -r su ss < <(ticks "$2"); read -r lu ls < <(ticks "$load"); read -r wu ws < <(children "$2")
        sleep 3
        read -r su2 ss2 < <(ticks "$2"); read -r lu2 ls2 < <(ticks "$load"); read -r wu2 ws2 < <(children "$2")
        wait "$load"
        python3 - "$1" "$hz" "$su" "$ss" "$su2" "$ss2" "$lu" "$ls" "$lu2" "$ls2" "$wu" "$ws" "$wu2" "$ws2" "$WORK/load.json" <<'PY'
import json, sys
name, hz = sys.argv[1], int(sys.argv[2])
su, ss, su2, ss2, lu, ls, lu2, ls2, wu, ws, wu2, ws2 = map(int, sys.argv[3:15])
rps = next(json.loads(l[5:]) for l in open(sys.argv[15]) if l.startswith("JSON "))["rps"]
per = lambda t: t / hz / (rps * 3) * 1e6
workers = f"; SPF workers user {per(wu2 - wu):.1f} us, kernel {per(ws2 - ws):.1f} us" if wu2 + ws2 else ""
print(f"{name}: {rps:,.0f} req/s; CPU per request: server user {per(su2 - su):.1f} us, kernel {per(ss2 - ss):.1f} us; "
      f"policyload {per(lu2 - lu + ls2 - ls):.1f} us{workers}")
PY
    }
    cpu backstop "$SERVER" "$PORT"
    cpu refserver "$REF" "$REF_PORT"
    exit 0
fi
# Under valgrind /proc/self/exe is valgrind's own binary: the workers are named instead.
BACKSTOP_SPF_WORKER_BINARY="$WORK/backstop" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
    "$WORK/backstop" serve -c "$WORK/backstop.toml" 2> "$WORK/valgrind.log" &
PIDS+=($!)
python3 bench/first_answer.py wait "$PORT" --timeout 300
callgrind_control -i on > /dev/null
"$POLICYLOAD" -q -t "127.0.0.1:$PORT" -f "bench/mixes/$SCENARIO.mix" -c 16 -n "$WARMUP" > /dev/null   # warm-up (DNS cache, keys)
callgrind_control -z > /dev/null
# Another seed than the warm-up's: the same one would replay its requests, and spf-warm
# would be answered from the outcome cache.
"$POLICYLOAD" -q -s 2 -t "127.0.0.1:$PORT" -f "bench/mixes/$SCENARIO.mix" -c 16 -n "$REQUESTS" | cut -c1-120 >&2
callgrind_control -d > /dev/null
sleep 1
OUTFILE=$(ls "$WORK"/callgrind.out.* | head -n 1)
mkdir -p .build/bench && cp "$OUTFILE" ".build/bench/callgrind-$SCENARIO.out"
total=$(callgrind_annotate "$OUTFILE" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "scenario $SCENARIO: $total instructions for $REQUESTS requests = $((total / REQUESTS)) per request"
echo "--- self"
callgrind_annotate "$OUTFILE" | grep -E '^ *[0-9,]+ +\(' | sed -n '2,26p' | cut -c1-180
echo "--- inclusive (Backstop's own functions)"
callgrind_annotate --inclusive=yes "$OUTFILE" | grep -E 'Backstop(Core|Server|SPF)|libspf2' | sed -n '1,25p' | cut -c1-180
echo "(kept in .build/bench/callgrind-$SCENARIO.out; open with callgrind_annotate or kcachegrind)"
