# Sourced by the pass-through measuring scripts (wrk-light-load.sh, instructions-per-request.sh):
# the nginx origin serving a fixed chat completion, nginx started as the load harness starts it,
# and bestofn N = 1 in front of the origin. The caller sets `rig_name` (for messages) and needs
# python3 and nginx. The rig makes `dir` (a scratch directory) and `pids` (the processes started,
# killed with TERM on exit, which stops an nginx master and its workers); a caller with more to
# stop sets its own EXIT trap and calls `rig_cleanup` from it.

dir=$(mktemp -d)
pids=()
rig_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap rig_cleanup EXIT

# The origin's one answer, and the request the clients send.
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"The answer is 42."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":6,"total_tokens":18}}'
request_body='{"model":"m","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is 6 times 7?"}],"max_tokens":16}'

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.1
    done
    echo "$rig_name: nothing listens on port $1" >&2
    exit 1
}

# start_nginx NAME WORKERS ACCESS_LOG SERVER_BLOCK: nginx in the foreground of its own prefix
# directory under $dir, as the harness starts it.
start_nginx() {
    local name=$1 workers=$2 access_log=$3 server=$4 prefix="$dir/$1"
    mkdir -p "$prefix"
    cat >"$prefix/nginx.conf" <<CONF
worker_processes $workers; user root; daemon off; pid $prefix/nginx.pid; error_log $prefix/error.log warn;
events { worker_connections 8192; }
http {
 access_log $access_log; keepalive_requests 1000000;
 client_body_temp_path $prefix/body; proxy_temp_path $prefix/proxy; fastcgi_temp_path $prefix/fastcgi;
 uwsgi_temp_path $prefix/uwsgi; scgi_temp_path $prefix/scgi;
$server
}
CONF
    nginx -p "$prefix" -c "$prefix/nginx.conf" &
    pids+=("$!")
}

# start_origin PORT: the origin, one worker, no access log.
start_origin() {
    start_nginx origin 1 off " server { listen 127.0.0.1:$1; location / { default_type application/json; return 200 '$answer'; } }"
}

# write_bestofn_config ORIGIN_PORT: $dir/bestofn.toml, N = 1 in front of the origin (the scorer
# is never called at N = 1).
write_bestofn_config() {
    cat >"$dir/bestofn.toml" <<CONF
[upstream]
base_url = "http://127.0.0.1:$1/v1"
timeout_ms = 30000

[scorers.rm]
kind = "reward_http"
api = "vllm_classify"
url = "http://127.0.0.1:9/classify"
model = "rm"

[policy]
n = 1
scorer = "rm"
CONF
}

# bestofn_port LOG TRIES: the port bestofn said it listens on in LOG, waiting TRIES tenths of a
# second for the line; exits when it never comes.
bestofn_port() {
    for _ in $(seq "$2"); do
        grep -q "listening on http://" "$1" && break
        sleep 0.1
    done
    local port
    port=$(sed -n 's/.*listening on http:\/\/[0-9.]*:\([0-9]*\).*/\1/p' "$1" | head -n 1)
    [ -n "$port" ] || { echo "$rig_name: bestofn did not start:" >&2; cat "$1" >&2; exit 1; }
    echo "$port"
}
