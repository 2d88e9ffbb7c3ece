#!/usr/bin/env bash
# Reruns every benchmark behind BENCHMARKS.md's load and micro-benchmark numbers and keeps the
# output: the load benchmark (bestofn versus direct calls and client-side best-of-N, open and
# closed loop, lognormal upstream with hedging, 1,000 concurrent requests, nginx as the anchor
# for a pass-through proxy, bounded upstream concurrency, overload with and without load-aware
# N) and the micro-benchmarks of the BoN computation and the consensus scorer. About 9 minutes
# after the release build. Prints numbers only; nothing is asserted.
#
#   scripts/bench.sh [OUT_DIR]      (default: target/bench; the report is OUT_DIR/report.txt)
#
# The load benchmark's knobs (BESTOFN_LOAD_*) are documented at the top of benches/load.rs;
# BESTOFN_LOAD_BIN runs an older bestofn binary through the same harness, as the anchor for a
# before/after comparison. nginx comes from Debian (installed here when missing and possible).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench}
mkdir -p "$OUT"
REPORT="$OUT/report.txt"
if ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ]; then
    (apt-get install -y -qq nginx-light || sudo -n apt-get install -y -qq nginx-light) >/dev/null 2>&1 \
        || echo "nginx is not installed and could not be: the nginx section will be skipped" >&2
fi
# Each scenario holds up to 1,000 client and 16,000 upstream sockets open at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
{
    echo "# bestofn benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "# $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
} | tee "$REPORT"
cargo bench --quiet --bench load 2>/dev/null | tee -a "$REPORT"
echo | tee -a "$REPORT"
cargo bench --quiet --bench bon_speed 2>/dev/null | tee -a "$REPORT"
echo | tee -a "$REPORT"
cargo bench --quiet --bench consensus_speed 2>/dev/null | tee -a "$REPORT"
echo "report: $REPORT"
