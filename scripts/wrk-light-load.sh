#!/usr/bin/env bash
# The light-load pass-through measured as a new user would (issue #17): wrk with 4 connections,
# each pausing 8 ms between requests (~470 req/s), against nginx serving a fixed chat completion
# (direct), nginx as a reverse proxy to it (proxy_pass, keep-alive upstream, access log on) and
# bestofn N = 1 in front of it (log at info). Rounds rotate the order of the three targets so
# that a busy moment of the machine does not always fall on the same one. Prints each round's
# p50 and p99, each proxy's overhead over direct, CPU a request (from /proc), and the median over
# rounds of bestofn's overhead as a multiple of nginx-as-proxy's (the issue's target: 1.2x).
# Also the serving processes' context switches a request: how often they slept waiting for an
# event and how often they were preempted (BENCHMARKS.md, issue #17, fifteenth sitting).
# The load harness's section 5 (benches/load.rs) is the open-loop version of the same question.
#
#   scripts/wrk-light-load.sh [BESTOFN_BINARY]     default target/release/bestofn
#   ROUNDS=6 SECONDS_EACH=5 scripts/wrk-light-load.sh
#
# Needs nginx (nginx-light) and wrk (Debian packages) and python3 (free ports, medians).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/release/bestofn}")
rounds=${ROUNDS:-6}
seconds=${SECONDS_EACH:-5}
for tool in nginx wrk python3; do
    command -v "$tool" >/dev/null || { echo "wrk-light-load: $tool is not installed (apt-get install nginx-light wrk python3)" >&2; exit 1; }
done
[ -x "$binary" ] || { echo "wrk-light-load: no bestofn binary at $binary (cargo build --release)" >&2; exit 1; }

rig_name=wrk-light-load
# shellcheck source=scripts/pass-through-rig.sh
. scripts/pass-through-rig.sh
origin_port=$(free_port)
proxy_port=$(free_port)
start_origin "$origin_port"
start_nginx proxy auto "$dir/proxy/access.log" " upstream origin { server 127.0.0.1:$origin_port; keepalive 256; }
 server { listen 127.0.0.1:$proxy_port; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
wait_for_port "$origin_port"
wait_for_port "$proxy_port"

write_bestofn_config "$origin_port"
RUST_LOG=info "$binary" serve --config "$dir/bestofn.toml" --listen 127.0.0.1:0 2>"$dir/bestofn.log" >/dev/null &
bestofn_pid=$!
pids+=("$bestofn_pid")
bestofn_port=$(bestofn_port "$dir/bestofn.log" 100)

cat >"$dir/request.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$request_body'
function delay() return 8 end
EOF

# The serving processes of each target: nginx's workers (children of its master), bestofn itself.
serving_pids() {
    case $1 in
        direct) pgrep -P "${pids[0]}" | tr '\n' ' ' ;;
        nginx) pgrep -P "${pids[1]}" | tr '\n' ' ' ;;
        bestofn) echo "$bestofn_pid" ;;
    esac
}
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$total"
}
# Context switches of the serving processes' threads, summed: "VOLUNTARY INVOLUNTARY" (slept,
# waiting for an event; preempted), both read from the same snapshot of each thread's status.
switches() {
    local pid statuses=()
    for pid in "$@"; do statuses+=(/proc/"$pid"/task/*/status); done
    awk '$1 == "voluntary_ctxt_switches:" {v += $2} $1 == "nonvoluntary_ctxt_switches:" {n += $2}
        END {print v + 0, n + 0}' "${statuses[@]}"
}
# per_request COUNT REQUESTS: COUNT over REQUESTS, two decimals.
per_request() { awk -v count="$1" -v requests="$2" 'BEGIN { printf "%.2f", count / requests }'; }
port_of() {
    case $1 in
        direct) echo "$origin_port" ;;
        nginx) echo "$proxy_port" ;;
        bestofn) echo "$bestofn_port" ;;
    esac
}
# wrk prints latencies as 412.00us, 1.20ms or 1.01s: µs out.
to_us() { python3 -c 'import sys; v = sys.argv[1]; u = {"us": 1, "ms": 1e3, "s": 1e6}; n = v.rstrip("usm"); print(round(float(n) * u[v[len(n):]]))' "$1"; }

# Warm-up: connections opened, caches and pools filled.
for target in direct nginx bestofn; do
    wrk -t1 -c4 -d1s -s "$dir/request.lua" "http://127.0.0.1:$(port_of "$target")/v1/chat/completions" >/dev/null
done

hz=$(getconf CLK_TCK)
results="$dir/results"
echo "wrk -t1 -c4 -d${seconds}s, 8 ms pause a connection; $rounds rounds; bestofn: $binary"
printf '%-6s %-8s %8s %8s %8s %10s %10s %9s %7s %7s\n' round target requests "p50 µs" "p99 µs" "Δp50 µs" "Δp99 µs" "CPU µs/req" \
    "sleeps" "preempt"
orders=("direct nginx bestofn" "bestofn direct nginx" "nginx bestofn direct")
for round in $(seq "$rounds"); do
    declare -A p50=() p99=() requests=() cpu=() sleeps=() preempted=()
    for target in ${orders[$(((round - 1) % 3))]}; do
        read -r -a serving <<<"$(serving_pids "$target")"
        before=$(cpu_ticks "${serving[@]}")
        read -r sleeps_before preempted_before <<<"$(switches "${serving[@]}")"
        out=$(wrk -t1 -c4 -d"${seconds}s" --latency -s "$dir/request.lua" "http://127.0.0.1:$(port_of "$target")/v1/chat/completions")
        after=$(cpu_ticks "${serving[@]}")
        read -r sleeps_after preempted_after <<<"$(switches "${serving[@]}")"
        requests[$target]=$(echo "$out" | awk '/requests in/ {print $1}')
        p50[$target]=$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')")
        p99[$target]=$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')")
        cpu[$target]=$(((after - before) * 1000000 / hz / ${requests[$target]}))
        sleeps[$target]=$(per_request $((sleeps_after - sleeps_before)) "${requests[$target]}")
        preempted[$target]=$(per_request $((preempted_after - preempted_before)) "${requests[$target]}")
    done
    for target in direct nginx bestofn; do
        printf '%-6s %-8s %8s %8s %8s %10s %10s %9s %7s %7s\n' "$round" "$target" "${requests[$target]}" "${p50[$target]}" "${p99[$target]}" \
            "$((${p50[$target]} - ${p50[direct]}))" "$((${p99[$target]} - ${p99[direct]}))" "${cpu[$target]}" \
            "${sleeps[$target]}" "${preempted[$target]}"
    done
    echo "$((${p50[nginx]} - ${p50[direct]})) $((${p99[nginx]} - ${p99[direct]})) $((${p50[bestofn]} - ${p50[direct]})) $((${p99[bestofn]} - ${p99[direct]}))" >>"$results"
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [list(map(int, line.split())) for line in open(sys.argv[1])]
ratio = lambda ours, theirs: ours / theirs if theirs > 0 else float("inf")
p50 = [ratio(r[2], r[0]) for r in rows]
p99 = [ratio(r[3], r[1]) for r in rows]
fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
print(f"bestofn's overhead over direct / nginx-as-proxy's, a round each: p50 {fmt(p50)}; p99 {fmt(p99)}")
print(f"median over rounds: p50 {statistics.median(p50):.2f}x, p99 {statistics.median(p99):.2f}x (target <= 1.2x); "
      f"rounds within 1.2x: p50 {sum(x <= 1.2 for x in p50)}/{len(rows)}, p99 {sum(x <= 1.2 for x in p99)}/{len(rows)}")
EOF
