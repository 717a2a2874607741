#!/usr/bin/env bash
# `make bench`: load-test llmq on this machine and compare with the targets.
#
# Four settings, each on a fresh database and a fresh queue prefix, with the
# fake provider, the API and one worker started here:
#   (a) provider latency 0 ms, worker concurrency 1024, closed loop (64
#       submits always in flight) — orchestration overhead: how fast the
#       whole machine turns executions over (judged on throughput)
#   (a') provider latency 0 ms, open loop at a gentle 100 submits/s (3,000
#       executions, 30 s) — latency at the load most deployments see most
#       of the time (judged on created → finished p50 / p99)
#   (b) provider latency 2000 ms, worker concurrency 8192, open loop at
#       2,500 submits/s — how many slow calls one worker holds, and submit
#       latency while the machine carries that load (an open loop measures
#       latency at a given load; a closed loop's latency is its concurrency
#       divided by its throughput, by construction)
#   (c) provider latency 0 ms, open loop at 1,000 submits/s, every
#       execution with a webhook to a local receiver — deliveries/s and
#       finished_at → delivered p50 / p99 (the webhooks role runs in the
#       same worker)
#   (d) provider latency 0 ms, closed loop, every execution with one tool
#       round: the model asks for one call of a local tool at 0 ms (the
#       fake provider's /tools/echo), llmq calls it and the model answers —
#       executions/s and CPU per execution; the difference with (a) is what
#       a tool round adds
# The load generator (tests/bench, `llmq-bench`) submits the executions over
# HTTP, waits for them via Postgres and prints its figures; a summary with the
# targets comes last. Targets are reported, not enforced: the script exits 0
# unless something broke.
#
# Env:
#   BENCH_N            executions per setting (default 20000)
#   BENCH_CONCURRENCY  submits in flight (default 64)
#   BENCH_RATE         open-loop submits per second for settings that name
#                      none (default 0: closed loop, BENCH_CONCURRENCY
#                      submits always in flight)
#   BENCH_WARMUP       warm-up executions per setting (default 200)
#   BENCH_TIMEOUT      seconds to wait for a setting's executions (default 240)
#   BENCH_SETTINGS     "LATENCY_MS:WORKER_CONCURRENCY[:RATE[:N[:webhook|limits]]] ..."
#                      (N overrides BENCH_N for that setting; `limits` turns on
#                      all four request rate limits, token budgets and spend
#                      caps, set high enough never to refuse, and reports
#                      Redis round trips and Redis CPU per execution from
#                      INFO commandstats / INFO cpu deltas — the shared Redis
#                      counts every client's commands, so run it on a quiet
#                      machine; "0:1024:0:20000:limits" is the issue's
#                      setting, "0:1024:2500:20000:limits" the submit p99 one;
#                      `webhook` makes
#                      every execution carry a webhook to the fake provider's
#                      /webhook receiver, runs the worker's `webhooks` role
#                      and reports deliveries/s and finished_at -> delivered;
#                      `tools` gives every execution one tool round against
#                      a 0 ms tool (the bench-tools prompt, written with a
#                      tools/ directory into .run/ for the run);
#                      "0:1024:1000:20000:webhook" is the issue's setting at
#                      1,000 executions/s, "0:1024:0:20000:webhook" the peak
#                      delivery rate)
#                      (default "0:1024 0:1024:100:3000 2000:8192:2500
#                      0:1024:1000:20000:webhook 0:1024:0:20000:tools
#                      0:1024:0:20000:limits 0:1024:2500:20000:limits")
#   BENCH_SSE          the event-stream setting, "LATENCY_MS:WORKER_CONCURRENCY:RATE:N"
#                      (default "20000:16384:1000:10000": N executions submitted
#                      at RATE/s, each with its own SSE subscriber opened right
#                      after its submit, so about N streams are held on the
#                      one API process while a 20 s model runs; reports the
#                      streams held, the API's peak RSS and the delay from an
#                      event's commit to its arrival at a subscriber);
#                      "off" skips it
#   BENCH_RETRIEVAL    the retrieval setting's collection sizes, "CHUNKS[:N] ..."
#                      (default "10000:2000 100000:2000": for each size a
#                      collection of CHUNKS chunks loaded straight into
#                      Postgres with fake embeddings, then N executions of
#                      the `ask` prompt, which retrieves from it, 0 ms model;
#                      reports executions/s and the retrieve step's p50 /
#                      p99: two sizes show whether retrieval degrades
#                      linearly with the collection); "off" skips it
#   BENCH_CURVE        set to 1 (`make bench-curve`) to also gather every
#                      0 ms setting into the latency-versus-load curve:
#                      .run/bench-curve.json, .run/bench-curve.svg and a
#                      Markdown table (copy the SVG to docs/ for the README)
#
# `make bench-curve` runs the sweep "0:1024:100:2000 0:1024:500:5000
# 0:1024:1000:10000 0:1024:2500:20000 0:1024:5000:20000 0:1024" (about 2
# minutes of load); `make bench-slow` runs "30000:32768:1000:60000": a 30 s
# model at 1,000 submits/s for a minute, about 30,000 calls held by one
# worker (BENCH_TIMEOUT 300 there).
#
# Isolation: the database (BENCH_DB) is dropped and recreated, the queue
# prefix is bench.<timestamp>.<setting> and the ports are the BENCH_*_PORT
# ones, none of which the test harness uses (it clones its databases from a
# template and picks free ports); two bench runs at once would collide.
#   BENCH_DB           database name, dropped and recreated (default llmq_bench)
#   BENCH_API_PORT / BENCH_PROVIDER_PORT / BENCH_METRICS_PORT (18080 / 18081 / 19464)
#   AMQP_URL           broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
#   BENCH_SPLIT        e.g. "2:90,1:10": before each setting, point the
#                      benchmark prompt's production label at this weighted
#                      split (submits then resolve through it); unset: no split
#   BENCH_SCOPED_KEY   1: clients authenticate with an llmq_sk_ key from the
#                      database (made by `llmq-api bootstrap-admin` after the
#                      migrations), through the API's key cache, instead of
#                      the configured development key (default 0)
#   BENCH_PROVIDER_LIMITS  "CONCURRENCY:RPM:TPM": the worker enforces these
#                      provider limits (in Redis, REDIS_URL) on gpt-4o-mini,
#                      the benchmark prompts' model; `make bench-provider-limits`
#                      sets them high enough never to defer ("100000:100000000:
#                      100000000000"), so the figures show the cost of two
#                      Redis round trips per model call; unset: no limits
#   BENCH_AFTER_MIGRATE_SQL  SQL run on the fresh database after the migrations
#                      (experiments, e.g. "ANALYZE executions" or an index change)
# Logs and results: .run/bench-*.log, .run/bench-*.json. The database is kept
# after the run for inspection (the next run drops it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BENCH_N=${BENCH_N:-20000}
BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-64}
BENCH_RATE=${BENCH_RATE:-0}
BENCH_WARMUP=${BENCH_WARMUP:-200}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
BENCH_SETTINGS=${BENCH_SETTINGS:-"0:1024 0:1024:100:3000 2000:8192:2500 0:1024:1000:20000:webhook 0:1024:0:20000:tools 0:1024:0:20000:limits 0:1024:2500:20000:limits"}
BENCH_SSE=${BENCH_SSE:-"20000:16384:1000:10000"}
BENCH_CURVE=${BENCH_CURVE:-0}
BENCH_RETRIEVAL=${BENCH_RETRIEVAL:-"10000:2000 100000:2000"}
BENCH_DB=${BENCH_DB:-llmq_bench}
API_PORT=${BENCH_API_PORT:-18080}
PROVIDER_PORT=${BENCH_PROVIDER_PORT:-18081}
METRICS_PORT=${BENCH_METRICS_PORT:-19464}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$BENCH_DB"
API_KEY=bench-key
# What the load generators present: the configured key, or a database key.
CLIENT_KEY=$API_KEY
BENCH_SCOPED_KEY=${BENCH_SCOPED_KEY:-0}
ADMIN_KEY=bench-admin-key
SPLIT_ARGS=()
[ -n "${BENCH_SPLIT:-}" ] && SPLIT_ARGS=(--split "$BENCH_SPLIT" --admin-key "$ADMIN_KEY")
RUN_DIR=.run
# BENCH_BIN: binaries already built elsewhere (e.g. target/debug for a
# smoke run of the script itself; its figures mean nothing).
BIN=${BENCH_BIN:-target/release}

LOCKED=""
if [ "${CI:-}" = true ] && [ -f Cargo.lock ]; then LOCKED=--locked; fi

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$RUN_DIR"

# Every model call in flight is a connection to the fake provider: one file
# descriptor in the worker and one in the provider. The 30 s setting holds
# ~30,000; raise the soft limit to the hard one (root may go higher).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- processes

PIDS=()          # started by this script, stopped in reverse order
QUEUE_PREFIX=""  # queues of the current setting, deleted on stop

start() { # start NAME LOGFILE CMD... (env assignments via `env`); sets STARTED_PID
    local name=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    log "started $name (pid $STARTED_PID, log $logfile)"
}

stop_pid() { # stop_pid PID: TERM, wait up to 15 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop within 15 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

delete_queues() {
    [ -n "$QUEUE_PREFIX" ] || return 0
    local q
    for q in "$QUEUE_PREFIX.executions" "$QUEUE_PREFIX.executions.dead"; do
        timeout 30 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
    QUEUE_PREFIX=""
}

stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
    PIDS=()
    delete_queues
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_http() { # wait_http URL PID SECONDS
    local url=$1 pid=$2 deadline=$((SECONDS + $3))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

wait_tcp() { # wait_tcp PORT PID SECONDS
    local port=$1 pid=$2 deadline=$((SECONDS + $3))
    # shellcheck disable=SC2016  # expanded by the inner bash
    until timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

port_free() { # true when nothing listens on 127.0.0.1:PORT
    # shellcheck disable=SC2016
    ! timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# redis_stats: "<client round trips> <all commands> <cpu seconds>" of the
# Redis at REDIS_URL. Round trips are the commands clients send (EVALSHA,
# EVAL, SCRIPT, PING and anything not run inside a script: GET/SET/... are
# counted apart because the limit scripts run them inside EVALSHA).
redis_stats() {
    local info
    info=$(timeout 5 redis-cli -u "$REDIS_URL" info all 2>/dev/null | tr -d '\r') || { echo "0 0 0"; return; }
    awk -F'[:,=]' '
        /^cmdstat_/ { name = substr($1, 9); all += $3;
                      if (name == "evalsha" || name == "eval" || name == "script" || name == "ping") client += $3 }
        /^used_cpu_sys:/ || /^used_cpu_user:/ { cpu += $2 }
        END { printf "%d %d %.3f\n", client, all, cpu }' <<<"$info"
}

vm_hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

psql_admin() {
    PGCONNECT_TIMEOUT=5 psql -w -X -q -v ON_ERROR_STOP=1 -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

# ---------------------------------------------------------------- one setting

# Called plainly (not in a condition) so that `set -e` stays in force inside;
# a run that did not complete sets failed=1.
setting_name() { # setting_name LATENCY_MS RATE [webhook]
    if [ "$2" = 0 ]; then echo "${1}ms${3:+-$3}"; else echo "${1}ms-${2}per-s${3:+-$3}"; fi
}

run_setting() { # run_setting LATENCY_MS WORKER_CONCURRENCY RATE N [sse|webhook|tools|limits|retrieval:CHUNKS]
    local latency=$1 concurrency=$2 rate=$3 n=$4 mode=${5:-} hooks= name ts rc=0 hwm rabbit_pid
    [ "$mode" = webhook ] && hooks=webhook
    [ "$mode" = tools ] && hooks=tools
    [ "$mode" = limits ] && hooks=limits
    name=$(setting_name "$latency" "$rate" "$hooks")
    [ "$mode" = sse ] && name="sse-$name"
    case "$mode" in retrieval:*) name="retrieval-${mode#retrieval:}" ;; esac
    local out="$RUN_DIR/bench-$name.out" json="$RUN_DIR/bench-$name.json"
    rm -f "$json" "$out"
    log "=== setting $name: provider latency $latency ms, worker concurrency $concurrency, $n executions, $([ "$rate" = 0 ] && echo "closed loop" || echo "open loop at $rate/s")"

    # Everything shares 2 cores: other work skews the figures, so say so.
    local busy
    busy=$(pgrep -d, -x 'cargo|rustc|clippy-driver|cc|ld' 2>/dev/null || true)
    log "load average: $(cut -d' ' -f1-3 /proc/loadavg)${busy:+; other builds running (pids $busy): figures will be lower}"
    log "open files limit $(ulimit -n); local ports $(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range) (caps the connections to one provider address)"

    for port in "$API_PORT" "$PROVIDER_PORT" "$METRICS_PORT"; do
        port_free "$port" || die "port $port is in use (left over from an earlier run? see $RUN_DIR/bench-*.log)"
    done

    local prompts_dir=prompts
    if [ "$mode" = tools ]; then
        # One tool round per execution: the prompt's text carries the fake
        # model's tool marker; the tool is the fake provider's, at 0 ms.
        prompts_dir=$RUN_DIR/bench-prompts
        rm -rf "$prompts_dir" "$RUN_DIR/bench-tools"
        cp -r prompts "$prompts_dir"
        mkdir -p "$prompts_dir/bench-tools" "$RUN_DIR/bench-tools"
        cat >"$prompts_dir/bench-tools/v1.toml" <<'TOML'
description = "Benchmark: one tool round per execution."
model = "gpt-4o-mini"
template = """{{ text }} [[tool:echo {"city":"Oslo"}]]"""
tools = ["echo"]

[input_schema]
type = "object"
required = ["text"]

[input_schema.properties.text]
type = "string"
TOML
        cat >"$RUN_DIR/bench-tools/echo.toml" <<TOML
description = "Answers at once with its arguments."
idempotent = true

[endpoint]
method = "POST"
url = "http://127.0.0.1:$PROVIDER_PORT/tools/echo"

[parameters]
type = "object"
required = ["city"]

[parameters.properties.city]
type = "string"
TOML
    fi
    psql_admin -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" >/dev/null || die "cannot drop database $BENCH_DB"
    psql_admin -c "CREATE DATABASE \"$BENCH_DB\"" >/dev/null || die "cannot create database $BENCH_DB"
    DATABASE_URL=$DB_URL LLMQ_PROMPTS_DIR=$prompts_dir RUST_LOG=warn "$BIN/llmq-api" migrate \
        >"$RUN_DIR/bench-migrate.log" 2>&1 || die "migrate failed (see $RUN_DIR/bench-migrate.log)"
    if [ -n "${BENCH_AFTER_MIGRATE_SQL:-}" ]; then
        log "running BENCH_AFTER_MIGRATE_SQL: $BENCH_AFTER_MIGRATE_SQL"
        PGCONNECT_TIMEOUT=5 psql -w -X -q -v ON_ERROR_STOP=1 -d "$DB_URL" -c "$BENCH_AFTER_MIGRATE_SQL" >/dev/null ||
            die "BENCH_AFTER_MIGRATE_SQL failed"
    fi

    if [ "$BENCH_SCOPED_KEY" = 1 ]; then
        CLIENT_KEY=$(DATABASE_URL=$DB_URL LLMQ_PROMPTS_DIR=prompts RUST_LOG=warn \
            "$BIN/llmq-api" bootstrap-admin --name bench 2>>"$RUN_DIR/bench-migrate.log") ||
            die "bootstrap-admin failed (see $RUN_DIR/bench-migrate.log)"
        log "clients use a database key (${CLIENT_KEY:0:16}...)"
    fi

    ts=$(date +%Y%m%d%H%M%S)
    QUEUE_PREFIX="bench.$ts.$name"
    local common=(
        "DATABASE_URL=$DB_URL" "AMQP_URL=$AMQP_URL" "LLMQ_QUEUE_PREFIX=$QUEUE_PREFIX"
        "LLMQ_PROMPTS_DIR=$prompts_dir" "LLMQ_API__ADDR=127.0.0.1:$API_PORT" "LLMQ_API__API_KEY=$API_KEY"
        "LLMQ_API__ADMIN_KEY=$ADMIN_KEY" "RUST_LOG=warn"
        "REDIS_URL=$REDIS_URL" "LLMQ_REDIS_PREFIX=bench.$ts.$name:"
    )
    local worker_extra=() bench_extra=()
    if [ -n "${BENCH_PROVIDER_LIMITS:-}" ]; then
        IFS=: read -r lim_conc lim_rpm lim_tpm <<<"$BENCH_PROVIDER_LIMITS"
        worker_extra+=("LLMQ_MODELS__gpt-4o-mini__MAX_CONCURRENCY=$lim_conc"
            "LLMQ_MODELS__gpt-4o-mini__RPM=$lim_rpm" "LLMQ_MODELS__gpt-4o-mini__TPM=$lim_tpm")
    fi
    if [ "$hooks" = webhook ]; then
        # Deliveries go to the fake provider's /webhook over plain http.
        common+=("LLMQ_WEBHOOKS__ALLOW_HTTP=true" 'LLMQ_WEBHOOKS__ALLOWED_HOSTS=["127.0.0.1"]')
        worker_extra+=('LLMQ_WORKER__ROLES=["executions","relay","webhooks"]')
        bench_extra=(--webhook-url "http://127.0.0.1:$PROVIDER_PORT/webhook")
    fi
    if [ "$mode" = tools ]; then
        worker_extra=("LLMQ_TOOLS_DIR=$RUN_DIR/bench-tools")
        bench_extra=(--prompt bench-tools)
    fi
    if [ "$hooks" = limits ]; then
        # Every limit on, none ever reached: the cost of checking them.
        local f
        for f in KEY ORG MODEL; do
            common+=("LLMQ_LIMITS__DEFAULTS__${f}_REQUESTS_PER_MINUTE=100000000")
        done
        common+=("LLMQ_LIMITS__DEFAULTS__USER_REQUESTS_PER_MINUTE=100000000"
            "LLMQ_LIMITS__DEFAULTS__TOKENS_PER_MINUTE=1000000000000"
            "LLMQ_LIMITS__DEFAULTS__TOKENS_PER_DAY=1000000000000"
            "LLMQ_LIMITS__DEFAULTS__MODEL_TOKENS_PER_MINUTE=1000000000000"
            "LLMQ_LIMITS__DEFAULTS__MODEL_TOKENS_PER_DAY=1000000000000"
            "LLMQ_LIMITS__DEFAULTS__SPEND_USD_PER_DAY=1000000000"
            "LLMQ_LIMITS__DEFAULTS__SPEND_USD_PER_MONTH=1000000000")
        bench_extra+=(--user bench-user)
    fi

    start fake-provider "$RUN_DIR/bench-fake-provider-$name.log" \
        env RUST_LOG=warn "$BIN/fake-provider" --port "$PROVIDER_PORT" --latency-ms "$latency"
    local provider_pid=$STARTED_PID
    wait_tcp "$PROVIDER_PORT" "$provider_pid" 30 || die "fake provider did not listen on $PROVIDER_PORT"

    start llmq-api "$RUN_DIR/bench-api-$name.log" env "${common[@]}" "$BIN/llmq-api" serve
    local api_pid=$STARTED_PID
    wait_http "http://127.0.0.1:$API_PORT/readyz" "$api_pid" 60 ||
        die "llmq-api not ready on $API_PORT within 60 s (see $RUN_DIR/bench-api-$name.log)"

    start llmq-worker "$RUN_DIR/bench-worker-$name.log" env "${common[@]}" \
        "LLMQ_PROVIDER__BASE_URL=http://127.0.0.1:$PROVIDER_PORT/v1" \
        "LLMQ_WORKER__CONCURRENCY=$concurrency" \
        "LLMQ_WORKER__METRICS_ADDR=127.0.0.1:$METRICS_PORT" \
        "LLMQ_WORKER__SHUTDOWN_GRACE_SECS=5" \
        "LLMQ_DB_POOL_SIZE=32" \
        "${worker_extra[@]}" \
        "$BIN/llmq-worker"
    local worker_pid=$STARTED_PID
    sleep 1
    kill -0 "$worker_pid" 2>/dev/null || die "llmq-worker exited at start (see $RUN_DIR/bench-worker-$name.log)"

    local watch=(--watch "worker=$worker_pid" --watch "api=$api_pid" --watch "fake-provider=$provider_pid")
    rabbit_pid=$(pgrep -o -x beam.smp 2>/dev/null || true)
    [ -n "$rabbit_pid" ] && watch+=(--watch "rabbitmq=$rabbit_pid")

    local redis_before
    redis_before=$(redis_stats)
    if [ "${mode%%:*}" = retrieval ]; then
        "$BIN/llmq-bench" retrieval --api "http://127.0.0.1:$API_PORT" --api-key "$CLIENT_KEY" \
            --database-url "$DB_URL" --chunks "${mode#retrieval:}" -n "$n" -c "$BENCH_CONCURRENCY" \
            --timeout-secs "$BENCH_TIMEOUT" --label "$name" --json-out "$json" | tee "$out" || rc=$?
    elif [ "$mode" = sse ]; then
        "$BIN/llmq-bench" sse --api "http://127.0.0.1:$API_PORT" --api-key "$CLIENT_KEY" \
            -n "$n" --rate "$rate" --timeout-secs "$BENCH_TIMEOUT" --api-pid "$api_pid" \
            --label "$name" --json-out "$RUN_DIR/bench-$name.sse.json" | tee "$out" || rc=$?
    else
        "$BIN/llmq-bench" \
            --api "http://127.0.0.1:$API_PORT" --api-key "$CLIENT_KEY" --database-url "$DB_URL" \
            -n "$n" -c "$BENCH_CONCURRENCY" --rate "$rate" --warmup "$BENCH_WARMUP" \
            --timeout-secs "$BENCH_TIMEOUT" --warmup-timeout-secs 60 \
            --label "$name" --provider-latency-ms "$latency" --worker-concurrency "$concurrency" \
            "${watch[@]}" "${SPLIT_ARGS[@]}" "${bench_extra[@]}" --json-out "$json" | tee "$out" || rc=$?
    fi

    if [ "$hooks" = limits ]; then
        # Settlements run in the background right after each finish.
        sleep 1
        local b_rt b_all b_cpu a_rt a_all a_cpu total=$((n + BENCH_WARMUP)) line
        read -r b_rt b_all b_cpu <<<"$redis_before"
        read -r a_rt a_all a_cpu <<<"$(redis_stats)"
        line=$(awk -v rt=$((a_rt - b_rt)) -v all=$((a_all - b_all)) -v cpu="$a_cpu" -v bcpu="$b_cpu" -v n="$total" \
            'BEGIN { printf "Redis per execution (%d incl. warm-up): %.2f round trips, %.1f commands incl. those inside scripts, %.1f us CPU", n, rt / n, all / n, (cpu - bcpu) * 1e6 / n }')
        log "$name: $line"
        printf '%s: %s\n' "$name" "$line" >>"$RUN_DIR/bench-redis.txt"
    fi

    hwm=$(vm_hwm_kb "$worker_pid")
    if kill -0 "$worker_pid" 2>/dev/null; then
        log "worker peak RSS (VmHWM) before stop: ${hwm:-?} kB ($((${hwm:-0} / 1024)) MB)"
    else
        log "worker (pid $worker_pid) is no longer running (see $RUN_DIR/bench-worker-$name.log)"
        rc=1
    fi
    printf '%s %s\n' "$name" "${hwm:-}" >>"$RUN_DIR/bench-hwm.txt"

    stop_all
    for f in api worker fake-provider; do
        if grep -qiE 'panick|ERROR' "$RUN_DIR/bench-$f-$name.log"; then
            log "$f log has errors ($(grep -ciE 'panick|ERROR' "$RUN_DIR/bench-$f-$name.log") lines), first:"
            grep -iE 'panick|ERROR' "$RUN_DIR/bench-$f-$name.log" | head -n 3 | cut -c1-300 >&2
        fi
    done
    if [ "$rc" != 0 ]; then
        log "setting $name: did not complete (exit $rc)"
        failed=1
    fi
}

# ---------------------------------------------------------------- main

started=$SECONDS
log "setup (PostgreSQL, RabbitMQ, Redis)"
DATABASE_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$BENCH_DB" AMQP_URL=$AMQP_URL REDIS_URL=$REDIS_URL bash scripts/setup.sh

if [ "$(psql_admin -c 'show autovacuum' 2>/dev/null || true)" = off ]; then
    log "note: PostgreSQL runs with autovacuum = off: the fresh database has no planner statistics"
fi

if [ -z "${BENCH_BIN:-}" ]; then
    log "building release binaries"
    cargo build --release $LOCKED --workspace
fi

: >"$RUN_DIR/bench-hwm.txt"
: >"$RUN_DIR/bench-redis.txt"
failed=0
results=()
curve=()
for setting in $BENCH_SETTINGS; do
    IFS=: read -r latency concurrency rate n hooks <<<"$setting"
    rate=${rate:-$BENCH_RATE}
    run_setting "$latency" "${concurrency:-1024}" "$rate" "${n:-$BENCH_N}" "${hooks:-}"
    json="$RUN_DIR/bench-$(setting_name "$latency" "$rate" "${hooks:-}").json"
    if [ -f "$json" ]; then
        results+=("$json")
        [ "$latency" = 0 ] && [ -z "${hooks:-}" ] && curve+=("$json")
    fi
done

if [ "$BENCH_SSE" != off ]; then
    # Ten thousand streams are ten thousand sockets on each side.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    IFS=: read -r latency concurrency rate n <<<"$BENCH_SSE"
    run_setting "$latency" "$concurrency" "$rate" "$n" sse
fi

retrieval_outs=()
if [ "$BENCH_RETRIEVAL" != off ]; then
    for size in $BENCH_RETRIEVAL; do
        IFS=: read -r chunks n <<<"$size"
        run_setting 0 1024 0 "${n:-2000}" "retrieval:$chunks"
        retrieval_outs+=("$RUN_DIR/bench-retrieval-$chunks.out")
    done
fi

printf '\n== llmq bench summary (%s executions per setting, %d s in all)\n' \
    "$BENCH_N" "$((SECONDS - started))"
printf '   machine: %s cores, %s; everything (Postgres, RabbitMQ, API, worker, fake provider, load generator) on it\n\n' \
    "$(nproc)" "$(awk '/MemTotal/ {printf "%.0f GB RAM", $2/1048576}' /proc/meminfo)"
if [ "${#results[@]}" -gt 0 ]; then
    "$BIN/llmq-bench" summary "${results[@]}"
fi
if [ "$BENCH_CURVE" = 1 ] && [ "${#curve[@]}" -gt 0 ]; then
    printf '\n== latency versus load (0 ms model): %s/bench-curve.json, %s/bench-curve.svg\n\n' "$RUN_DIR" "$RUN_DIR"
    "$BIN/llmq-bench" curve --json-out "$RUN_DIR/bench-curve.json" --svg-out "$RUN_DIR/bench-curve.svg" \
        --title "llmq latency versus load, 0 ms model ($(nproc) cores, $(date -u +%Y-%m-%d))" "${curve[@]}"
fi
if [ "${#retrieval_outs[@]}" -gt 0 ]; then
    printf '\n== retrieval (collection size, executions/s, retrieve step p50 / p99)\n'
    for f in "${retrieval_outs[@]}"; do
        [ -f "$f" ] && grep -E '^retrieval-' "$f" | sed 's/^/   /'
    done
fi
printf '\n'
while read -r name hwm; do
    [ -n "$name" ] && printf '   worker VmHWM (read by bench.sh before stopping it), %s: %s kB\n' "$name" "${hwm:-n/a}"
done <"$RUN_DIR/bench-hwm.txt"
while read -r line; do
    [ -n "$line" ] && printf '   %s\n' "$line"
done <"$RUN_DIR/bench-redis.txt"
printf '   logs and results: %s/bench-*.log, %s/bench-*.json\n' "$RUN_DIR" "$RUN_DIR"

[ "$failed" = 0 ] || die "at least one setting did not complete (see above)"
