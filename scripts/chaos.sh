#!/usr/bin/env bash
# `make chaos`: the long SIGKILL chaos run. Thousands of executions go
# through worker processes that are killed with SIGKILL every few seconds
# and replaced; at the end every accepted execution must be terminal,
# none completed twice, and none may have called the model again after
# its generate step succeeded. Prints a table of what happened.
#
# It is the test `killed_workers_lose_nothing_and_never_repeat_a_finished_generate`
# of tests/tests/chaos.rs (which `make test` runs small), sized by:
#   CHAOS_EXECUTIONS     executions submitted          (default 3000)
#   CHAOS_KILLS          SIGKILLs at most              (default 25)
#   CHAOS_KILL_EVERY_MS  mean time between kills       (default 3000)
#   CHAOS_WORKERS        worker processes at a time    (default 2)
#   CHAOS_CONCURRENCY    executions per worker at once (default 8)
#   CHAOS_TESTS          test name filter (default killed_workers; "" runs
#                        every chaos test in release mode)
# Needs PostgreSQL and RabbitMQ (scripts/setup.sh provides them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO=${CARGO:-cargo}
LOCKED=()
if [ "${CI:-}" = true ] && [ -f Cargo.lock ]; then
    LOCKED=(--locked)
fi

export CHAOS_EXECUTIONS=${CHAOS_EXECUTIONS:-3000}
export CHAOS_KILLS=${CHAOS_KILLS:-25}
export CHAOS_KILL_EVERY_MS=${CHAOS_KILL_EVERY_MS:-3000}
export CHAOS_WORKERS=${CHAOS_WORKERS:-2}
export CHAOS_CONCURRENCY=${CHAOS_CONCURRENCY:-8}
CHAOS_TESTS=${CHAOS_TESTS-killed_workers}
# The in-process API and the workers' log files: errors only.
export RUST_LOG=${RUST_LOG:-error}

log() { printf '[chaos] %s\n' "$*" >&2; }

bash scripts/setup.sh

# The test spawns the worker binary found beside the test executable, so
# the release binaries must be current before the release test runs.
log "building release binaries"
"$CARGO" build --release "${LOCKED[@]}" --bins -p llmq-worker -p llmq-api

out=$(mktemp "${TMPDIR:-/tmp}/llmq-chaos.XXXXXX")
trap 'rm -f "$out"' EXIT

log "running ${CHAOS_TESTS:-every chaos test}: $CHAOS_EXECUTIONS executions, up to $CHAOS_KILLS SIGKILLs every ~${CHAOS_KILL_EVERY_MS} ms, $CHAOS_WORKERS workers x $CHAOS_CONCURRENCY"
filter=()
[ -n "$CHAOS_TESTS" ] && filter=("$CHAOS_TESTS")
set +e
"$CARGO" test --release "${LOCKED[@]}" -p llmq-tests --test chaos -- \
    --nocapture --test-threads=1 "${filter[@]}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e

printf '\n'
if grep -q '^chaos |' "$out"; then
    printf 'Chaos summary\n'
    grep '^chaos |' "$out" | sed 's/^chaos | //'
else
    printf 'No chaos table was printed (did the test run?)\n'
fi
if [ "$status" -eq 0 ]; then
    log "passed"
else
    log "FAILED (exit $status): see the output above"
fi
exit "$status"
