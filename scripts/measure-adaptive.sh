#!/usr/bin/env bash
# Measures adaptive sampling on a real model: SmolLM2-135M-Instruct behind a real llama-server,
# the project's 40 math word problems (gold answers) and 40 precise-instruction prompts, n = 16,
# parallel sampling. Three online runs through bestofn with the recorder on:
#   fixed     n = 16, every candidate sampled (the recording replayed offline below)
#   adaptive  first_wave = 2: math consensus with confidence = 0.95, instructions verify with
#             accept_score = 1.0
#   latency   the same rules with first_wave = 16 (all start together, the rest cancelled)
# Each run's recording is labelled (gold answers, the verifier's checks) and its recorded picks
# give the online accuracy; `bestofn eval replay` replays fixed N = 1..16 and the adaptive
# settings over the fixed run's candidates. Results: OUT/summary.md.
#
#   scripts/measure-adaptive.sh [OUT_DIR]     (default: target/measure-adaptive)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/measure-adaptive}
PORT=${BESTOFN_LLAMA_PORT:-8091}
mkdir -p "$OUT"

scripts/real-upstream.sh start "$PORT" >/dev/null
trap 'kill $(cat "$OUT"/*.pid 2>/dev/null) 2>/dev/null || true; scripts/real-upstream.sh stop' EXIT
cargo build --release --quiet

config() { # NAME ADAPTIVE FIRST_WAVE N
    cat <<TOML
[upstream]
base_url = "http://127.0.0.1:$PORT/v1"
sampling = "parallel"
timeout_ms = 300000

[policy]
n = $4
scorer = "consensus"

[domains.math]
scorer = "consensus"
adaptive = $2
first_wave = $3
confidence = 0.95

[domains.precise_if]
scorer = "verify"
adaptive = $2
first_wave = $3
accept_score = 1.0

[recorder]
path = "$OUT/$1.jsonl"
TOML
}

run_online() { # NAME ADAPTIVE FIRST_WAVE
    local name=$1
    rm -f "$OUT/$name.jsonl"
    config "$name" "$2" "$3" 16 >"$OUT/$name.toml"
    target/release/bestofn serve --config "$OUT/$name.toml" --listen 127.0.0.1:18092 2>"$OUT/$name.log" &
    echo $! >"$OUT/$name.pid"
    for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18092/healthz >/dev/null && break; sleep 0.2; done
    python3 - "$OUT/$name.requests.jsonl" <<'PY'
import json, sys, time, urllib.request
rows = [json.loads(l) for f in ("tests/data/prompts_math.jsonl", "tests/data/prompts_if.jsonl") for l in open(f)]
with open(sys.argv[1], "w") as out:
    for i, row in enumerate(rows):
        body = {"model": "smollm2", "messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": 48,
                "temperature": 0.8, "seed": 1000 + 16 * i, "bestofn": {"domain": row["domain"]}}
        req = urllib.request.Request("http://127.0.0.1:18092/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=600) as r:
            resp = json.load(r)
        b = resp["bestofn"]
        out.write(json.dumps({"domain": row["domain"], "latency_s": time.monotonic() - started,
                              "n_sampled": b["n_sampled"], "stop_reason": b.get("stop_reason"),
                              "completion_tokens": resp["usage"]["completion_tokens"]}) + "\n")
        print(f"{i + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
print(file=sys.stderr)
PY
    kill "$(cat "$OUT/$name.pid")"; rm -f "$OUT/$name.pid"
    sleep 1
    target/release/bestofn eval bon --samples "$OUT/$name.jsonl" --gold tests/data/prompts_math.jsonl \
        --config "$OUT/$name.toml" --label-with verify --bootstrap 1000 --seed 1 --format json >"$OUT/$name.bon.json"
}

run_online fixed false 16
run_online adaptive true 2
run_online latency true 16

# Offline: replay fixed N and the adaptive settings over the fixed run's candidates.
for n in 1 2 4 8 16; do
    config "replay-fixed-$n" false "$(( n < 2 ? n : 2 ))" "$n" | sed '/^\[recorder\]/,$d' >"$OUT/replay-fixed-$n.toml"
    target/release/bestofn eval replay --samples "$OUT/fixed.jsonl" --gold tests/data/prompts_math.jsonl \
        --config "$OUT/replay-fixed-$n.toml" --label-with verify --orders 50 --seed 1 --format json >"$OUT/replay-fixed-$n.json"
done
for fw in 2 16; do
    config "replay-adaptive-$fw" true "$fw" 16 | sed '/^\[recorder\]/,$d' >"$OUT/replay-adaptive-$fw.toml"
    target/release/bestofn eval replay --samples "$OUT/fixed.jsonl" --gold tests/data/prompts_math.jsonl \
        --config "$OUT/replay-adaptive-$fw.toml" --label-with verify --orders 50 --seed 1 --format json >"$OUT/replay-adaptive-$fw.json"
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys
out = sys.argv[1]
def load(name): return json.load(open(f"{out}/{name}"))
def requests(name): return [json.loads(l) for l in open(f"{out}/{name}.requests.jsonl")]
def q(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
for domain in ("math", "precise_if"):
    print(f"\n### {domain}\n")
    print("| policy | source | accuracy | 95% CI | mean candidates | mean completion tokens | stops |")
    print("|---|---|---:|---|---:|---:|---|")
    for n in (1, 2, 4, 8, 16):
        d = load(f"replay-fixed-{n}.json")["domains"][domain]["policy"]
        print(f"| fixed N={n} | replay | {d['accuracy']:.3f} | {d['ci_low']:.3f}..{d['ci_high']:.3f} | {d['mean_candidates']:.2f} | {d['mean_completion_tokens']:.1f} | |")
    for fw in (2, 16):
        d = load(f"replay-adaptive-{fw}.json")["domains"][domain]["policy"]
        print(f"| adaptive first_wave={fw} | replay | {d['accuracy']:.3f} | {d['ci_low']:.3f}..{d['ci_high']:.3f} | {d['mean_candidates']:.2f} | {d['mean_completion_tokens']:.1f} | |")
    for name, label in (("fixed", "fixed N=16"), ("adaptive", "adaptive first_wave=2"), ("latency", "adaptive first_wave=16")):
        pick = load(f"{name}.bon.json")["recorded_pick"][domain]
        reqs = [r for r in requests(name) if r["domain"] == domain]
        cand = sum(r["n_sampled"] for r in reqs) / len(reqs)
        tok = sum(r["completion_tokens"] for r in reqs) / len(reqs)
        stops = {}
        for r in reqs:
            stops[r["stop_reason"]] = stops.get(r["stop_reason"], 0) + 1
        stop_text = ", ".join(f"{k}: {v}" for k, v in sorted(stops.items(), key=lambda kv: str(kv[0])) if k)
        print(f"| {label} | online | {pick['accuracy']:.3f} | {pick['ci_low']:.3f}..{pick['ci_high']:.3f} | {cand:.2f} | {tok:.1f} | {stop_text} |")
print("\n### latency (online, sequential requests, seconds)\n")
print("| run | domain | p50 | p99 |")
print("|---|---|---:|---:|")
for name, label in (("fixed", "fixed N=16"), ("adaptive", "adaptive first_wave=2"), ("latency", "adaptive first_wave=16")):
    for domain in ("math", "precise_if"):
        lat = [r["latency_s"] for r in requests(name) if r["domain"] == domain]
        print(f"| {label} | {domain} | {q(lat, 0.5):.2f} | {q(lat, 0.99):.2f} |")
PY
