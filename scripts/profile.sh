#!/usr/bin/env bash
# Profiles bestofn under load: runs one load-benchmark scenario (by default N=16 parallel
# sampling, the most expensive path) long enough to sample, records the bestofn process with
# `perf record -g`, and writes a flat profile and, when inferno is installed
# (`cargo install inferno`), a flamegraph SVG.
#
#   scripts/profile.sh [SCENARIO] [OUT_DIR]    (defaults: "bestofn N=16 parallel", target/profile)
#
# Needs perf (Debian package linux-perf). Builds with frame pointers and line tables into its
# own target directory (BESTOFN_PROFILE_TARGET_DIR, default target/profile-build) so the regular
# build is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:-bestofn N=16 parallel}
OUT=${2:-target/profile}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
export CARGO_TARGET_DIR=${BESTOFN_PROFILE_TARGET_DIR:-target/profile-build}
export CARGO_PROFILE_BENCH_DEBUG=line-tables-only
export RUSTFLAGS="-C force-frame-pointers=yes"
cargo bench --no-run --bench load --quiet
log="$OUT/load.txt"
BESTOFN_LOAD_SECTIONS=1 BESTOFN_LOAD_FILTER="$SCENARIO" BESTOFN_LOAD_SECONDS=15 \
    cargo bench --quiet --bench load >"$log" 2>&1 &
bench=$!
for _ in $(seq 1 120); do grep -q "PIDs" "$log" 2>/dev/null && break; sleep 1; done
# The parallel-mode proxy serves the parallel scenarios; the n-mode one all others.
case "$SCENARIO" in
    *parallel*) pid=$(sed -n 's/.* parallel \([0-9]*\),.*/\1/p' "$log") ;;
    *) pid=$(sed -n 's/.*PIDs[^:]*: n \([0-9]*\),.*/\1/p' "$log") ;;
esac
sleep 3
perf record -F 999 -g -p "$pid" -o "$OUT/perf.data" -- sleep 8 2>/dev/null
wait "$bench"
# (head closes the pipe early; that is not a failure)
perf report -i "$OUT/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null \
    | grep '%' | cut -c1-160 | head -60 >"$OUT/flat.txt" || true
if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
        --title "bestofn: $SCENARIO" >"$OUT/flamegraph.svg"
    echo "flamegraph: $OUT/flamegraph.svg"
fi
grep -A3 "^scenario" "$log" || true
echo "flat profile: $OUT/flat.txt"
