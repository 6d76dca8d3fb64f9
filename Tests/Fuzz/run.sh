#!/usr/bin/env bash
# Builds the libFuzzer targets with AddressSanitizer and runs each for a bounded time
# (FUZZ_SECONDS, default 30): the policy request parser, the recipient table parser, the
# socketmap netstring parser with BATV tags and key files, the
# rate-limit overrides table (with the duration text every setting uses), the rate-limit state file, the metrics listener's request target, the DNS decoder, the SPF record grammar, SPF macro expansion and the worker wire format. The
# sources they need are compiled in directly, so no SwiftPM build with sanitizers is needed. Crashes are saved under
# .build/fuzz/ and make this script fail; turn each into a regression test.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-30}"
out=.build/fuzz
mkdir -p "$out"
core=Sources/BackstopCore

build() {  # name, sources...
    local name=$1; shift
    rm -f "$out/$name"  # a binary left from an earlier run must not hide a failed build
    swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name BackstopFuzz \
        "$@" -o "$out/$name" 2>&1 | grep -v "Cannot export local symbol" || true
    test -x "$out/$name"
}

run() {  # name, corpus[, binary (default: name)]
    local name=$1 corpus=$2 binary=${3:-$1} work="$out/$1-corpus"
    mkdir -p "$work"
    cp -n "$corpus"/* "$work"/ 2>/dev/null || true
    echo "fuzzing $name for ${seconds}s"
    if ! SWIFT_BACKTRACE=enable=no "$out/$binary" -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 \
            -artifact_prefix="$out/$name-" "$work" >"$out/$name.log" 2>&1; then
        tail -40 "$out/$name.log"
        echo "fuzzer $name found a crash: see $out/$name-crash-*" >&2
        return 1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$out/$name.log" | sed "s/^/  $name /"
}

# Everything in Protocol/ but the NIO-specific encoder entry point, and the octet helpers it uses (the
# encoder's printable check is ASCII's word scan).
build request-fuzzer Tests/Fuzz/RequestFuzzer.swift $(ls $core/Protocol/*.swift | grep -v '+ByteBuffer') $core/Support/Octets.swift \
    $core/Support/ASCII.swift
run request-fuzzer Tests/Fuzz/corpus/request
build table-fuzzer Tests/Fuzz/TableFuzzer.swift $(cat Tests/Fuzz/table-sources.txt)
run table-fuzzer Tests/Fuzz/corpus/table
# What Postfix (or anyone reaching the socketmap listener) sends, and the BATV key file.
build socketmap-fuzzer Tests/Fuzz/SocketmapFuzzer.swift $(cat Tests/Fuzz/socketmap-sources.txt)
run socketmap-fuzzer Tests/Fuzz/corpus/socketmap
# A rate-limit overrides table, and the limit and duration text of the configuration.
build overrides-fuzzer Tests/Fuzz/OverridesFuzzer.swift $(cat Tests/Fuzz/overrides-sources.txt)
run overrides-fuzzer Tests/Fuzz/corpus/overrides
# The metrics listener's request target (a scraper's text).
build http-target-fuzzer Tests/Fuzz/HTTPTargetFuzzer.swift Sources/BackstopServer/HTTPTarget.swift
run http-target-fuzzer Tests/Fuzz/corpus/http-target
build state-file-fuzzer Tests/Fuzz/StateFileFuzzer.swift $core/RateLimit/MemoryStoreSnapshot.swift $core/Support/FNV1a.swift $core/System/RegularFile.swift
run state-file-fuzzer Tests/Fuzz/corpus/state-file
# SPF: what a DNS server, a domain owner and a worker send. One build serves the four
# (they read the same sources); BACKSTOP_FUZZ picks the target of each run.
build spf-fuzzers Tests/Fuzz/SPFFuzzers.swift Tests/Fuzz/DNSFuzzer.swift Tests/Fuzz/SPFRecordFuzzer.swift \
    Tests/Fuzz/SPFMacroFuzzer.swift Tests/Fuzz/WireFuzzer.swift $(cat Tests/Fuzz/spf-sources.txt)
for name in dns spf-record spf-macro spf-wire; do
    BACKSTOP_FUZZ=$name run "$name-fuzzer" "Tests/Fuzz/corpus/$name" spf-fuzzers
done
