#!/usr/bin/env bash
# Regenerates the shipped samples file data/samples/smollm2-135m.jsonl (see
# data/samples/SOURCE.md): SmolLM2-135M-Instruct behind a real llama-server
# (scripts/real-upstream.sh), the project's 40 math word problems (gold answers) and 40
# precise-instruction prompts, served through bestofn with config/examples/llama-cpp.toml (N = 8,
# consensus, verify for precise_if) and the recorder on; request p is sent with seed 1000 + 8p
# (candidate i gets seed 1000 + 8p + i), temperature 0.8, at most 64 tokens, and the request id
# math-NN or if-NN. The recording is then labelled (math: the normalised final answer equals the
# gold answer; instructions: the verify scorer's fraction of stated constraints met) and rescored
# with consensus, verify and weighted_vote (defined in that config) on every row by
# examples/label_samples.rs (the code of `eval bon --gold --label-with --rescore`), which writes
# the rows with their labels and rewards.
#
#   scripts/make-samples.sh [OUT_FILE]     (default: data/samples/smollm2-135m.jsonl)
#
# Env: BESTOFN_LLAMA_PORT (default 8091), MAX_TOKENS (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_FILE=${1:-data/samples/smollm2-135m.jsonl}
PORT=${BESTOFN_LLAMA_PORT:-8091}
MAX_TOKENS=${MAX_TOKENS:-64}
CONFIG=config/examples/llama-cpp.toml
WORK=target/make-samples
LISTEN=127.0.0.1:18094
mkdir -p "$WORK" "$(dirname "$OUT_FILE")"
rm -f "$WORK/recorded.jsonl"

scripts/real-upstream.sh start "$PORT" >/dev/null
trap 'kill $(cat "$WORK/bestofn.pid" 2>/dev/null) 2>/dev/null || true; rm -f "$WORK/bestofn.pid"; scripts/real-upstream.sh stop' EXIT
cargo build --release --quiet
cargo build --release --quiet --example label_samples

# The shipped config as served (so `eval replay --as-recorded --config $CONFIG` reproduces the
# recorded picks), its upstream on $PORT, plus the recorder.
sed "s#^base_url = .*#base_url = \"http://127.0.0.1:$PORT/v1\"#" "$CONFIG" >"$WORK/serve.toml"
printf '\n[recorder]\npath = "%s"\n' "$WORK/recorded.jsonl" >>"$WORK/serve.toml"

target/release/bestofn serve --config "$WORK/serve.toml" --listen "$LISTEN" 2>"$WORK/bestofn.log" &
echo $! >"$WORK/bestofn.pid"
for _ in $(seq 1 50); do curl -sf "http://$LISTEN/healthz" >/dev/null && break; sleep 0.2; done

python3 - "$LISTEN" "$MAX_TOKENS" <<'PY'
import json, sys, urllib.request
listen, max_tokens = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for f in ("tests/data/prompts_math.jsonl", "tests/data/prompts_if.jsonl") for l in open(f)]
counts = {}
for p, row in enumerate(rows):
    tag = "math" if row["domain"] == "math" else "if"
    rid = f"{tag}-{counts.get(tag, 0):02d}"
    counts[tag] = counts.get(tag, 0) + 1
    body = {"model": "smollm2", "messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": max_tokens,
            "temperature": 0.8, "seed": 1000 + 8 * p, "bestofn": {"domain": row["domain"]}}
    req = urllib.request.Request(f"http://{listen}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "x-request-id": rid})
    with urllib.request.urlopen(req, timeout=600) as r:
        json.load(r)
    print(f"{p + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
print(file=sys.stderr)
PY
# The recorder writes off the request path: stop the proxy (it drains) and check every request
# was recorded.
sleep 1
kill "$(cat "$WORK/bestofn.pid")"
for _ in $(seq 1 50); do kill -0 "$(cat "$WORK/bestofn.pid")" 2>/dev/null || break; sleep 0.2; done
rm -f "$WORK/bestofn.pid"
expected=$(cat tests/data/prompts_math.jsonl tests/data/prompts_if.jsonl | wc -l)
recorded=$(wc -l <"$WORK/recorded.jsonl")
[ "$recorded" -eq "$expected" ] || { echo "make-samples: $recorded of $expected requests recorded" >&2; exit 1; }

target/release/examples/label_samples --samples "$WORK/recorded.jsonl" --out "$OUT_FILE" \
    --gold tests/data/prompts_math.jsonl --config "$CONFIG" --label-with verify --rescore consensus --rescore verify --rescore weighted_vote
"$(scripts/real-upstream.sh paths | head -1)" --version 2>&1 | grep -i version || true
ls -l "$OUT_FILE"
