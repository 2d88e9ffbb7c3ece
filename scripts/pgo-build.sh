#!/usr/bin/env bash
# Builds target/release/bestofn with profile-guided optimisation (PGO) and, where llvm-bolt is
# installed, a BOLT pass over the result. An instrumented build serves the load harness
# (benches/load.rs: pass-through at light load and at saturation, best-of-N in n and parallel
# modes, JSON and streamed); the release build is then laid out and inlined from the counts it
# wrote, and BOLT reorders that binary's blocks and functions from a second run of the same
# traffic. Why: a light-load request runs on cold caches, and its cost is spread over ~300
# functions with none above 3% (BENCHMARKS.md, issue #17); PGO puts the hot path together and
# the cold paths aside, and BOLT does the same at the level of the linked binary, across crates
# and the C allocator. Measured in BENCHMARKS.md ("Tenth sitting", "Eleventh sitting").
#
#   scripts/pgo-build.sh [EXTRA CARGO BUILD ARGS]     e.g. --features stage-timing
#   NO_BOLT=1 scripts/pgo-build.sh                    PGO only
#
# Needs llvm-profdata that reads the raw profiles of rustc's LLVM: rustup's llvm-tools component,
# or Debian's llvm-19 package or later (LLVM 19 to 22 write the same raw format, version 10).
# BOLT: Debian's bolt-19 package or later (llvm-bolt and merge-fdata); skipped when absent.
# nginx (nginx-light) lets the harness's pass-through section run; without it that section is
# skipped and the profile covers best-of-N only. 13-17 minutes on 2 cores from a fresh clone
# (8 with the instrumented build and the harness already built).
set -euo pipefail
cd "$(dirname "$0")/.."

llvm_majors() {
    # rustc's own LLVM first: a newer llvm-profdata does not read an older raw format.
    echo "$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p') 22 21 20 19"
}

find_profdata() {
    local sysroot candidate major
    sysroot=$(rustc --print sysroot)
    for candidate in "$sysroot"/lib/rustlib/*/bin/llvm-profdata; do
        [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    for major in $(llvm_majors); do
        command -v "llvm-profdata-$major" >/dev/null && { command -v "llvm-profdata-$major"; return; }
    done
    echo "pgo-build: no llvm-profdata for LLVM 19 or later: 'rustup component add llvm-tools' or 'apt-get install llvm-19'" >&2
    exit 1
}

# The directory holding llvm-bolt and merge-fdata, or nothing. Debian's /usr/lib/llvm-N/bin is
# preferred to the llvm-bolt-N link: llvm-bolt finds its instrumentation runtime
# (libbolt_rt_instr.a) relative to its own path, and through the link it looks in /usr/lib.
find_bolt_dir() {
    local major
    [ "${NO_BOLT:-0}" = 1 ] && return
    for major in $(llvm_majors); do
        [ -x "/usr/lib/llvm-$major/bin/llvm-bolt" ] && [ -x "/usr/lib/llvm-$major/bin/merge-fdata" ] &&
            { echo "/usr/lib/llvm-$major/bin"; return; }
    done
    command -v llvm-bolt >/dev/null && command -v merge-fdata >/dev/null && dirname "$(command -v llvm-bolt)"
    return 0
}
PROFDATA=$(find_profdata)
BOLT_DIR=$(find_bolt_dir)

WORK=target/pgo
rm -rf "$WORK/profiles" "$WORK/bolt"
mkdir -p "$WORK/profiles" "$WORK/bolt"
PROFILES=$(realpath "$WORK/profiles")
BOLT_WORK=$(realpath "$WORK/bolt")

# The load harness with BESTOFN_LOAD_BIN set to the binary to train; it is built once, in its own
# target directory, so that building it never replaces target/release/bestofn.
train() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    BESTOFN_LOAD_BIN="$1" BESTOFN_LOAD_SECTIONS=125 \
        BESTOFN_LOAD_SECONDS=2 BESTOFN_LOAD_OPEN_SECONDS=2 BESTOFN_LOAD_ROUNDS=1 \
        BESTOFN_LOAD_LIGHT_SECONDS=2 BESTOFN_LOAD_LIGHT_ROUNDS=1 \
        CARGO_TARGET_DIR="$WORK/harness" cargo bench --quiet --bench load >"$2" 2>&1
}

STEPS=3
[ -n "$BOLT_DIR" ] && STEPS=4
echo "pgo-build: 1/$STEPS instrumented build" >&2
CARGO_TARGET_DIR="$WORK/instrumented" RUSTFLAGS="-Cprofile-generate=$PROFILES" \
    cargo build --release --quiet --bin bestofn "$@"

echo "pgo-build: 2/$STEPS training on the load harness (sections 1, 2 and 5, shortened)" >&2
train "$(realpath "$WORK/instrumented/release/bestofn")" "$WORK/training.txt"
if ! compgen -G "$PROFILES/*.profraw" >/dev/null; then
    echo "pgo-build: the training wrote no profile (see $WORK/training.txt)" >&2
    exit 1
fi
"$PROFDATA" merge -o "$WORK/merged.profdata" "$PROFILES"/*.profraw

echo "pgo-build: 3/$STEPS optimised build" >&2
RUSTFLAGS="-Cprofile-use=$(realpath "$WORK/merged.profdata") -Cllvm-args=-pgo-warn-missing-function=false"
# BOLT rewrites a linked binary and needs its relocations kept.
[ -n "$BOLT_DIR" ] && RUSTFLAGS="$RUSTFLAGS -Clink-args=-Wl,--emit-relocs"
RUSTFLAGS="$RUSTFLAGS" cargo build --release --quiet --bin bestofn "$@"
echo "pgo-build: target/release/bestofn with PGO" >&2
[ -z "$BOLT_DIR" ] && { echo "pgo-build: no llvm-bolt (apt-get install bolt-19): PGO only" >&2; exit 0; }

echo "pgo-build: 4/4 BOLT, from $BOLT_DIR" >&2
cp target/release/bestofn "$BOLT_WORK/bestofn.pgo"
"$BOLT_DIR/llvm-bolt" "$BOLT_WORK/bestofn.pgo" -instrument -o "$BOLT_WORK/bestofn.instrumented" \
    --instrumentation-file="$BOLT_WORK/profile" --instrumentation-file-append-pid >"$BOLT_WORK/instrument.txt" 2>&1
train "$BOLT_WORK/bestofn.instrumented" "$BOLT_WORK/training.txt"
if ! compgen -G "$BOLT_WORK/profile.*.fdata" >/dev/null; then
    echo "pgo-build: the BOLT training wrote no profile (see $BOLT_WORK/training.txt)" >&2
    exit 1
fi
"$BOLT_DIR/merge-fdata" "$BOLT_WORK"/profile.*.fdata >"$BOLT_WORK/merged.fdata" 2>"$BOLT_WORK/merge.txt"
"$BOLT_DIR/llvm-bolt" "$BOLT_WORK/bestofn.pgo" -o "$BOLT_WORK/bestofn.bolt" --data "$BOLT_WORK/merged.fdata" \
    --reorder-blocks=ext-tsp --reorder-functions=hfsort --split-functions --split-all-cold --split-eh \
    --icf=1 --use-gnu-stack --dyno-stats >"$BOLT_WORK/optimise.txt" 2>&1
mv "$BOLT_WORK/bestofn.bolt" target/release/bestofn
echo "pgo-build: target/release/bestofn with PGO and BOLT (PGO alone: $WORK/bolt/bestofn.pgo)" >&2
