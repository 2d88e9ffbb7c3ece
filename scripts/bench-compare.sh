#!/usr/bin/env bash
# Before/after on the same machine: runs the load benchmark's throughput section for an older
# bestofn binary and for this build, alternating, ROUNDS times, so that the VM's drift between
# runs (10-30% in throughput here) lands on both alike. Prints every round's rows.
#
#   scripts/bench-compare.sh OLD_BINARY [ROUNDS] [FILTER]
#
# Build the older binary from a worktree, e.g.
#   git worktree add /tmp/old <commit> && CARGO_TARGET_DIR=/tmp/old-target cargo build --release --manifest-path /tmp/old/Cargo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: scripts/bench-compare.sh OLD_BINARY [ROUNDS] [FILTER]}
ROUNDS=${2:-3}
FILTER=${3:-bestofn N=1 pass-through|bestofn N=16 parallel|bestofn N=16 n mode}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo bench --quiet --bench load --no-run
for round in $(seq 1 "$ROUNDS"); do
    for which in old new; do
        if [ "$which" = old ]; then bin=$OLD; else bin=; fi
        echo "## round $round: $which"
        BESTOFN_LOAD_BIN=$bin BESTOFN_LOAD_SECTIONS=1 BESTOFN_LOAD_FILTER="$FILTER" \
            cargo bench --quiet --bench load 2>/dev/null | grep -E '^bestofn '
    done
done
