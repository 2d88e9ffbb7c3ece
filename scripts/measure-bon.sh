#!/usr/bin/env bash
# Measures best-of-N gains per domain on a real model: SmolLM2-135M-Instruct behind a real
# llama-server, 40 math word problems (gold answers) and 40 precise-instruction prompts, N = 16.
# Traffic goes through bestofn with the recorder on; the recording is then labelled (gold
# answers for math, the verifiers for instructions), rescored with the verify scorer, and
# evaluated with `bestofn eval bon`.
#
#   scripts/measure-bon.sh [OUT_DIR]     (default: target/measure-bon)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/measure-bon}
PORT=${BESTOFN_LLAMA_PORT:-8091}
mkdir -p "$OUT"
rm -f "$OUT/samples.jsonl"

scripts/real-upstream.sh start "$PORT" >/dev/null
trap 'kill $(cat "$OUT/bestofn.pid" 2>/dev/null) 2>/dev/null || true; scripts/real-upstream.sh stop' EXIT
cargo build --release --features plot --quiet

cat >"$OUT/bestofn.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "http://127.0.0.1:$PORT/v1"
sampling = "auto"
timeout_ms = 300000

[policy]
n = 16
scorer = "consensus"

[recorder]
path = "$OUT/samples.jsonl"
TOML

target/release/bestofn serve --config "$OUT/bestofn.toml" --listen 127.0.0.1:18091 2>"$OUT/bestofn.log" &
echo $! >"$OUT/bestofn.pid"
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18091/healthz >/dev/null && break; sleep 0.2; done

python3 - "$OUT" <<'PY'
import json, sys, urllib.request
out = sys.argv[1]
rows = [json.loads(l) for f in ("tests/data/prompts_math.jsonl", "tests/data/prompts_if.jsonl") for l in open(f)]
for i, row in enumerate(rows):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": 48,
            "temperature": 0.8, "seed": 1000 + i, "bestofn": {"domain": row["domain"]}}
    req = urllib.request.Request("http://127.0.0.1:18091/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        json.load(r)
    print(f"{i + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
print(file=sys.stderr)
PY
# The recorder writes off the request path: give it a moment to drain.
sleep 1
target/release/bestofn eval bon --samples "$OUT/samples.jsonl" --gold tests/data/prompts_math.jsonl \
    --config "$OUT/bestofn.toml" --label-with verify --rescore verify --bootstrap 1000 --seed 1 \
    --plot "$OUT/bon.svg" | tee "$OUT/bon.txt"
target/release/bestofn eval bon --samples "$OUT/samples.jsonl" --gold tests/data/prompts_math.jsonl \
    --config "$OUT/bestofn.toml" --label-with verify --rescore verify --bootstrap 1000 --seed 1 --format md >"$OUT/bon.md"
