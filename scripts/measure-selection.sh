#!/usr/bin/env bash
# Measures selection rules on a real model: SmolLM2-135M-Instruct behind a real llama-server,
# the project's 40 math (gold answers) and 40 instruction prompts, N = 8.
# - best vs soft (T = 0.5, 1, 2): offline, exactly, from a recorded run (`eval bon --selection`);
# - fuse: online, SmolLM2 fusing its own top 4 candidates; the fused answers and the best
#   candidates of the same requests are labelled like candidates (gold answers, the verifier).
#   scripts/measure-selection.sh [OUT_DIR]     (default: target/measure-selection)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/measure-selection}
PORT=${BESTOFN_LLAMA_PORT:-8091}
mkdir -p "$OUT"
rm -f "$OUT/recorded.jsonl"
scripts/real-upstream.sh start "$PORT" >/dev/null
trap 'kill $(cat "$OUT/bestofn.pid" 2>/dev/null) 2>/dev/null || true; scripts/real-upstream.sh stop' EXIT
cargo build --release --quiet
cat >"$OUT/fuse.toml" <<TOML
[upstream]
base_url = "http://127.0.0.1:$PORT/v1"
sampling = "parallel"
timeout_ms = 300000

[policy]
n = 8
scorer = "consensus"
selection = "fuse"
fuse_top = 4

[domains.precise_if]
scorer = "verify"

[fuser]
max_tokens = 64
timeout_ms = 120000

[recorder]
path = "$OUT/recorded.jsonl"
TOML
target/release/bestofn serve --config "$OUT/fuse.toml" --listen 127.0.0.1:18093 2>"$OUT/bestofn.log" &
echo $! >"$OUT/bestofn.pid"
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18093/healthz >/dev/null && break; sleep 0.2; done
python3 - "$OUT" <<'PY'
import json, sys, urllib.request
out = sys.argv[1]
rows = [json.loads(l) for f in ("tests/data/prompts_math.jsonl", "tests/data/prompts_if.jsonl") for l in open(f)]
fused, best, stats = open(f"{out}/fused.jsonl", "w"), open(f"{out}/best.jsonl", "w"), []
for i, row in enumerate(rows):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": 48,
            "temperature": 0.8, "seed": 5000 + 8 * i, "bestofn": {"domain": row["domain"], "return_candidates": True}}
    req = urllib.request.Request("http://127.0.0.1:18093/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        resp = json.load(r)
    b = resp["bestofn"]
    answer = resp["choices"][0]["message"]["content"]
    chosen = b["candidates"][b["chosen"]]["text"]
    for f, text in ((fused, answer), (best, chosen)):
        f.write(json.dumps({"prompt_id": f"p{i}", "domain": row["domain"], "prompt": row["prompt"],
                            "candidates": [{"text": text}]}) + "\n")
    stats.append({"domain": row["domain"], "fused": bool(b.get("fused")), "failed": b.get("fuse_failed"),
                  "fuser_tokens": b.get("usage", {}).get("fuser", {}).get("completion_tokens", 0),
                  "generation_tokens": b["usage"]["generation"]["completion_tokens"]})
    print(f"{i + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
json.dump(stats, open(f"{out}/stats.json", "w"))
PY
kill "$(cat "$OUT/bestofn.pid")"; rm -f "$OUT/bestofn.pid"; sleep 1
for which in fused best; do
    target/release/bestofn eval bon --samples "$OUT/$which.jsonl" --gold tests/data/prompts_math.jsonl \
        --config "$OUT/fuse.toml" --label-with verify --bootstrap 1000 --seed 1 --format json >"$OUT/$which.bon.json"
done
for sel in "best 1" "soft 0.5" "soft 1" "soft 2"; do
    set -- $sel
    target/release/bestofn eval bon --samples "$OUT/recorded.jsonl" --gold tests/data/prompts_math.jsonl \
        --config "$OUT/fuse.toml" --label-with verify --rescore consensus --rescore verify --selection "$1" \
        --soft-temperature "$2" --bootstrap 1000 --seed 1 --format json >"$OUT/sel-$1-$2.json"
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys
out = sys.argv[1]
stats = json.load(open(f"{out}/stats.json"))
print("| domain | rule | scorer | accuracy @8 | 95% CI |")
print("|---|---|---|---:|---|")
for domain, scorer in (("math", "consensus"), ("precise_if", "verify")):
    for sel in ("best-1", "soft-0.5", "soft-1", "soft-2"):
        d = json.load(open(f"{out}/sel-{sel}.json"))["domains"][domain]
        r = d["rewards"][scorer]
        print(f"| {domain} | {sel.replace('-1', '') if sel == 'best-1' else 'soft T=' + sel.split('-')[1]} | {scorer} | {r['bon'][3]:.3f} | {r['ci_low'][3]:.3f}..{r['ci_high'][3]:.3f} |")
    for which, label in (("best", "best (online pick)"), ("fused", "fuse (SmolLM2 fuses its top 4)")):
        d = json.load(open(f"{out}/{which}.bon.json"))["domains"][domain]
        print(f"| {domain} | {label} | {scorer} | {d['mean']:.3f} | |")
    s = [x for x in stats if x["domain"] == domain]
    print(f"\n{domain}: fused {sum(x['fused'] for x in s)}/{len(s)}, fuser tokens per request {sum(x['fuser_tokens'] for x in s)/len(s):.1f}, candidate tokens {sum(x['generation_tokens'] for x in s)/len(s):.1f}\n")
PY
