#!/usr/bin/env bash
# Instructions a light pass-through costs bestofn, counted by callgrind: repeatable whatever else
# the machine is doing, so two builds compare in one number where latency runs scatter
# (BENCHMARKS.md, issue #17, fourteenth sitting). bestofn N = 1 in front of nginx serving a fixed
# chat completion; a keep-alive client sends WARMUP requests, the counters are zeroed, REQUESTS
# more are sent and the counts are dumped before shutdown. Prints the total, instructions a
# request, the hot code's footprint (the distinct instructions run about once a request or more,
# at least 0.9 times on average, and the 64-byte cache lines and 4 KiB pages they lie on: what a
# request on cold caches and a cold TLB has to fetch, the thing PGO and BOLT shrink) and the
# functions with the largest inclusive share; the full profile is left in target/callgrind/ for
# callgrind_annotate.
#
#   scripts/instructions-per-request.sh [BESTOFN_BINARY]     default target/release/bestofn
#   REQUESTS=2000 WARMUP=200 scripts/instructions-per-request.sh
#
# Needs valgrind, nginx (nginx-light) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/release/bestofn}")
requests=${REQUESTS:-2000}
warmup=${WARMUP:-200}
for tool in valgrind callgrind_control callgrind_annotate nginx python3; do
    command -v "$tool" >/dev/null || { echo "instructions-per-request: $tool is not installed (apt-get install valgrind nginx-light python3)" >&2; exit 1; }
done
[ -x "$binary" ] || { echo "instructions-per-request: no bestofn binary at $binary (cargo build --release)" >&2; exit 1; }
out_dir=$(realpath -m target/callgrind)
mkdir -p "$out_dir"

rig_name=instructions-per-request
# shellcheck source=scripts/pass-through-rig.sh
. scripts/pass-through-rig.sh
cleanup() {
    # valgrind at once (its exit would dump again), then what the rig started.
    [ -n "${valgrind_pid:-}" ] && kill -9 "$valgrind_pid" 2>/dev/null || true
    rig_cleanup
}
trap cleanup EXIT
port=$(free_port)
start_origin "$port"
wait_for_port "$port"
write_bestofn_config "$port"
profile="$out_dir/callgrind.out"
rm -f "$profile"*
RUST_LOG=info valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$profile" \
    "$binary" serve --config "$dir/bestofn.toml" --listen 127.0.0.1:0 2>"$dir/bestofn.log" >/dev/null &
valgrind_pid=$!
# valgrind starts bestofn slowly.
bestofn_port=$(bestofn_port "$dir/bestofn.log" 600)

send() {
    python3 - "$bestofn_port" "$1" "$request_body" <<'PY'
import http.client, sys
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    connection.request("POST", "/v1/chat/completions", sys.argv[3], {"Content-Type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"bestofn answered {answer.status}")
PY
}
send "$warmup"
callgrind_control -z "$valgrind_pid" >/dev/null 2>&1
send "$requests"
callgrind_control -d "$valgrind_pid" >/dev/null 2>&1
# The dump is written asynchronously.
for _ in $(seq 100); do
    ls "$profile".* >/dev/null 2>&1 && break
    sleep 0.1
done
sleep 1
dump=$(ls -t "$profile".* | head -n 1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "bestofn: $binary"
echo "$total instructions over $requests pass-through requests: $((total / requests)) a request"
python3 - "$dump" "$requests" <<'PY'
# Cost lines start with the instruction's address (absolute, +/- relative to the previous one,
# or * for the same); the line after a calls= line is the call's inclusive cost, not this
# instruction's own.
import collections, sys
runs, address, positions, call_cost_next = collections.Counter(), 0, ["line"], False
for line in open(sys.argv[1]):
    fields = line.split()
    if not fields:
        continue
    if fields[0] == "positions:":
        positions = fields[1:]
    elif fields[0].startswith("calls="):
        call_cost_next = True
    elif fields[0][0].isdigit() or fields[0][0] in "+-*":
        token = fields[0]
        address = address if token == "*" else address + int(token, 0) if token[0] in "+-" else int(token, 0)
        if call_cost_next:
            call_cost_next = False
        elif len(fields) > len(positions):
            runs[address] += int(fields[len(positions)])
hot = [a for a, count in runs.items() if count * 10 >= int(sys.argv[2]) * 9]
print(f"hot code (run at least 0.9 times a request): {len(hot)} instructions on {len({a >> 6 for a in hot})} "
      f"64-byte lines and {len({a >> 12 for a in hot})} 4 KiB pages")
PY
echo "largest inclusive shares, instructions a request:"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | grep 'bestofn::' | head -n 15 |
    awk -v n="$requests" '{count = $1; gsub(",", "", count); sub(/^.*\?\?\?:/, ""); sub(/ \[.*$/, ""); printf "%8d  %s\n", count / n, $0}' |
    cut -c1-160
echo "profile: $dump"
