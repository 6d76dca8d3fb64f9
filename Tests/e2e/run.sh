#!/usr/bin/env bash
# Runs the end-to-end stage: a private Postfix (started as root, everything under a temp
# directory, loopback only) wired to the built backstop binary, driven by swaks.
#   Tests/e2e/run.sh [pytest args]      e.g. -k unknown_recipient, -x
# Environment: BACKSTOP_BIN (default .build/debug/backstop); BACKSTOP_E2E_KEEP=1 keeps the
# temp directory (also kept on failure); BACKSTOP_E2E_REQUIRE_ALL_CHECKS=1 fails instead of
# skipping scenarios whose check is missing from the binary.
# Needs: root, postfix (postfix, postconf, postqueue, smtp-sink), swaks, python3 >= 3.11
# with pytest >= 7.2 and dnslib: on Debian 12 `apt-get install postfix swaks python3-pytest
# python3-dnslib` (PYTHON=... picks another interpreter). Exits non-zero on any failure,
# and after 5 minutes.
set -u
cd "$(dirname "$0")/../.."
export BACKSTOP_BIN="${BACKSTOP_BIN:-$PWD/.build/debug/backstop}"
export PYTHONDONTWRITEBYTECODE=1
PYTHON="${PYTHON:-python3}"   # any Python >= 3.11 with pytest (>= 7.2) and dnslib

missing=""
[ "$(id -u)" = 0 ] || missing="$missing root(postfix must be started as root)"
for tool in /usr/sbin/postfix /usr/sbin/postconf /usr/sbin/postqueue /usr/sbin/smtp-sink swaks "$PYTHON"; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
"$PYTHON" -c 'import pytest' 2>/dev/null || missing="$missing pytest(apt install python3-pytest)"
"$PYTHON" -c 'import dnslib' 2>/dev/null || missing="$missing dnslib(apt install python3-dnslib)"
[ -x "$BACKSTOP_BIN" ] || missing="$missing $BACKSTOP_BIN(swift build --product backstop)"
if [ -n "$missing" ]; then
    echo "e2e: cannot run, missing:$missing" >&2
    exit 2
fi

start=$(date +%s)
# SIGINT, not SIGTERM, at the time limit: pytest then still stops Postfix and Backstop.
timeout --signal=INT --kill-after=30 300 "$PYTHON" -m pytest -q Tests/e2e "$@"
rc=$?
echo "e2e: stage took $(( $(date +%s) - start ))s, exit code $rc"
[ $rc = 124 ] && echo "e2e: stopped at the 5 minute limit" >&2
exit $rc
