#!/usr/bin/env bash
# Builds target/release/bestofn with profile-guided optimisation (PGO): an instrumented build
# serves the load harness (benches/load.rs: pass-through at light load and at saturation, best-of-N
# in n and parallel modes, JSON and streamed), and the release build is then laid out and inlined
# from the counts it wrote. Why: a light-load request runs on cold caches, and its cost is spread
# over ~300 functions with none above 3% (BENCHMARKS.md, issue #17); PGO puts the hot path
# together and the cold paths aside. Measured in BENCHMARKS.md ("Tenth sitting").
#
#   scripts/pgo-build.sh [EXTRA CARGO BUILD ARGS]     e.g. --features stage-timing
#
# Needs llvm-profdata that reads the raw profiles of rustc's LLVM: rustup's llvm-tools component,
# or Debian's llvm-19 package or later (LLVM 19 to 22 write the same raw format, version 10).
# nginx (nginx-light) lets the harness's pass-through section run; without it that section is
# skipped and the profile covers best-of-N only. About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

find_profdata() {
    local sysroot candidate
    sysroot=$(rustc --print sysroot)
    for candidate in "$sysroot"/lib/rustlib/*/bin/llvm-profdata; do
        [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    # rustc's own LLVM first: a newer llvm-profdata does not read an older raw format.
    for major in $(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p') 22 21 20 19; do
        command -v "llvm-profdata-$major" >/dev/null && { command -v "llvm-profdata-$major"; return; }
    done
    echo "pgo-build: no llvm-profdata for LLVM 19 or later: 'rustup component add llvm-tools' or 'apt-get install llvm-19'" >&2
    exit 1
}
PROFDATA=$(find_profdata)

WORK=target/pgo
rm -rf "$WORK/profiles"
mkdir -p "$WORK/profiles"
PROFILES=$(realpath "$WORK/profiles")

echo "pgo-build: 1/3 instrumented build" >&2
CARGO_TARGET_DIR="$WORK/instrumented" RUSTFLAGS="-Cprofile-generate=$PROFILES" \
    cargo build --release --quiet --bin bestofn "$@"

echo "pgo-build: 2/3 training on the load harness (sections 1, 2 and 5, shortened)" >&2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
BESTOFN_LOAD_BIN=$(realpath "$WORK/instrumented/release/bestofn") BESTOFN_LOAD_SECTIONS=125 \
    BESTOFN_LOAD_SECONDS=2 BESTOFN_LOAD_OPEN_SECONDS=2 BESTOFN_LOAD_ROUNDS=1 \
    cargo bench --quiet --bench load >"$WORK/training.txt" 2>&1
if ! compgen -G "$PROFILES/*.profraw" >/dev/null; then
    echo "pgo-build: the training wrote no profile (see $WORK/training.txt)" >&2
    exit 1
fi
"$PROFDATA" merge -o "$WORK/merged.profdata" "$PROFILES"/*.profraw

echo "pgo-build: 3/3 optimised build" >&2
RUSTFLAGS="-Cprofile-use=$(realpath "$WORK/merged.profdata") -Cllvm-args=-pgo-warn-missing-function=false" \
    cargo build --release --quiet --bin bestofn "$@"
echo "pgo-build: target/release/bestofn, trained on $(ls "$PROFILES" | wc -l) profiles" >&2
