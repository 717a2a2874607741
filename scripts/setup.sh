#!/usr/bin/env bash
# Make sure PostgreSQL, RabbitMQ and Redis are installed, running and usable
# by llmq.
#
# Idempotent and silent when everything is already in place. On a fresh
# Debian machine it apt-installs postgresql / rabbitmq-server / redis-server,
# starts them (no systemd needed), lets local TCP connections as `postgres` in without a
# password, raises max_connections and creates the llmq database.
#
# Env:
#   DATABASE_URL   default postgres://postgres@127.0.0.1:5432/llmq
#   AMQP_URL       default amqp://guest:guest@127.0.0.1:5672/%2f
#   REDIS_URL      default redis://127.0.0.1:6379
#   LLMQ_PG_MAX_CONNECTIONS  minimum max_connections (default 300)
#   LLMQ_PG_CLUSTER          Debian cluster to manage (default main)
# When a URL points at a non-local host, nothing is installed or started for
# it: the script only checks that it is reachable.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/llmq}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
REDIS_WAIT_SECS=${LLMQ_REDIS_WAIT_SECS:-30}
PG_MIN_CONNECTIONS=${LLMQ_PG_MAX_CONNECTIONS:-300}
PG_WAIT_SECS=${LLMQ_PG_WAIT_SECS:-60}
RABBIT_WAIT_SECS=${LLMQ_RABBIT_WAIT_SECS:-90}
PG_CLUSTER=${LLMQ_PG_CLUSTER:-main}   # Debian cluster name (pg_lsclusters)

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Serialize concurrent runs (e.g. two `make test` at once) on this machine.
if command -v flock >/dev/null 2>&1 && [ -z "${LLMQ_SETUP_LOCKED:-}" ]; then
    export LLMQ_SETUP_LOCKED=1
    exec 9>"${TMPDIR:-/tmp}/llmq-setup.lock"
    flock -w 300 9 || die "could not take ${TMPDIR:-/tmp}/llmq-setup.lock within 300s"
fi

# ---------------------------------------------------------------- helpers

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
    [ "$(id -u)" = 0 ] || die "need root to apt-get install $* (or install it by hand)"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install -y $* (this may take a minute)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" >/dev/null 9>&-   # postinst scripts may start daemons
}

# tcp_open HOST PORT: true when something accepts a TCP connection there.
tcp_open() {
    local host=$1 port=$2
    host=${host#[}; host=${host%]}
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

is_local_host() {
    case "$1" in
        ""|127.0.0.1|localhost|::1|"[::1]"|127.*) return 0 ;;
        *) return 1 ;;
    esac
}

# parse_url URL DEFAULT_PORT -> sets U_USER U_PASS U_HOST U_PORT U_PATH
parse_url() {
    local url=$1 default_port=$2 rest auth hostport
    rest=${url#*://}
    U_PATH=""
    if [[ $rest == */* ]]; then
        U_PATH=${rest#*/}
        rest=${rest%%/*}
    fi
    U_PATH=${U_PATH%%\?*}
    auth=""
    if [[ $rest == *@* ]]; then
        auth=${rest%@*}
        hostport=${rest##*@}
    else
        hostport=$rest
    fi
    U_USER=${auth%%:*}
    U_PASS=""
    [[ $auth == *:* ]] && U_PASS=${auth#*:}
    if [[ $hostport == \[* ]]; then            # [::1]:5432
        U_HOST=${hostport%%]*}]
        U_PORT=${hostport#"$U_HOST"}
        U_PORT=${U_PORT#:}
    elif [[ $hostport == *:* ]]; then
        U_HOST=${hostport%%:*}
        U_PORT=${hostport#*:}
    else
        U_HOST=$hostport
        U_PORT=""
    fi
    U_PORT=${U_PORT:-$default_port}
}

# ---------------------------------------------------------------- PostgreSQL

pg_installed() {
    command -v psql >/dev/null 2>&1 &&
        command -v pg_ctlcluster >/dev/null 2>&1 &&
        command -v pg_isready >/dev/null 2>&1 &&
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Newest installed server version, e.g. 15.
pg_version() {
    local v=""
    if [ -d /etc/postgresql ]; then
        v=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    fi
    if [ -z "$v" ]; then
        v=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    fi
    printf '%s' "$v"
}

PG_ADMIN_URL=""
pg_psql() {
    # -w: never prompt for a password; PGCONNECT_TIMEOUT: never hang.
    PGCONNECT_TIMEOUT=5 psql -w -X -q -v ON_ERROR_STOP=1 -At -d "$PG_ADMIN_URL" "$@"
}

pg_wait_ready() {
    local host=$1 port=$2 deadline=$((SECONDS + PG_WAIT_SECS))
    until pg_isready -q -h "$host" -p "$port" -t 2 >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

pg_ctl_cluster() { # pg_ctl_cluster VER ACTION
    # 9>&-: the server must not inherit (and keep) our lock file descriptor.
    pg_ctlcluster --skip-systemctl-redirect "$1" "$PG_CLUSTER" "$2" 9>&-
}

ensure_postgres_local() {
    local host=$1 port=$2 ver conf_dir hba err cur
    pg_installed || apt_install postgresql
    pg_installed || die "PostgreSQL still missing after apt-get install postgresql"

    ver=$(pg_version)
    [ -n "$ver" ] || die "cannot find the installed PostgreSQL version"
    conf_dir=/etc/postgresql/$ver/$PG_CLUSTER
    if [ ! -f "$conf_dir/postgresql.conf" ]; then
        log "creating PostgreSQL $ver cluster '$PG_CLUSTER' on port $port"
        pg_createcluster "$ver" "$PG_CLUSTER" --port "$port" >/dev/null 9>&-
    fi

    if ! pg_isready -q -h "$host" -p "$port" -t 2 >/dev/null 2>&1; then
        if pg_lsclusters -h 2>/dev/null | awk -v v="$ver" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
            log "PostgreSQL $ver/$PG_CLUSTER is running but does not answer on $host:$port yet; waiting"
        else
            log "starting PostgreSQL $ver/$PG_CLUSTER"
            pg_ctl_cluster "$ver" start || die "pg_ctlcluster $ver $PG_CLUSTER start failed (see /var/log/postgresql/postgresql-$ver-$PG_CLUSTER.log)"
        fi
        pg_wait_ready "$host" "$port" || die "PostgreSQL did not answer on $host:$port within ${PG_WAIT_SECS}s (check listen_addresses/port in $conf_dir/postgresql.conf)"
    fi

    # Password-less local TCP for user postgres.
    if ! err=$(pg_psql -c 'select 1' 2>&1 >/dev/null); then
        if printf '%s' "$err" | grep -qiE 'password|authentication|fe_sendauth|pg_hba'; then
            hba=$conf_dir/pg_hba.conf
            [ -f "$hba" ] || die "cannot authenticate and $hba not found: $err"
            log "allowing password-less local TCP connections (trust for 127.0.0.1/32, ::1/128) in $hba"
            cp -p "$hba" "$hba.llmq-bak"
            {
                echo "# llmq (scripts/setup.sh): password-less local TCP for development/tests"
                echo "host    all             all             127.0.0.1/32            trust"
                echo "host    all             all             ::1/128                 trust"
                cat "$hba.llmq-bak"
            } >"$hba"
            pg_ctl_cluster "$ver" reload >/dev/null
            sleep 1
            err=$(pg_psql -c 'select 1' 2>&1 >/dev/null) || die "still cannot connect as $PG_ADMIN_URL: $err"
        else
            die "cannot connect to PostgreSQL ($PG_ADMIN_URL): $err"
        fi
    fi

    # Tests and benchmarks open many pools.
    cur=$(pg_psql -c 'show max_connections')
    if [ "${cur:-0}" -lt "$PG_MIN_CONNECTIONS" ]; then
        log "raising PostgreSQL max_connections from $cur to $PG_MIN_CONNECTIONS (restarting $ver/$PG_CLUSTER)"
        pg_psql -c "alter system set max_connections = $PG_MIN_CONNECTIONS" >/dev/null
        pg_ctl_cluster "$ver" restart || die "pg_ctlcluster $ver $PG_CLUSTER restart failed (see /var/log/postgresql/postgresql-$ver-$PG_CLUSTER.log)"
        pg_wait_ready "$host" "$port" || die "PostgreSQL did not come back within ${PG_WAIT_SECS}s after restart"
        cur=$(pg_psql -c 'show max_connections')
        [ "$cur" -ge "$PG_MIN_CONNECTIONS" ] || die "max_connections is still $cur"
    fi
}

ensure_database() {
    local db=$1 exists err
    exists=$(pg_psql -c "select 1 from pg_database where datname = '${db//\'/\'\'}'") ||
        die "cannot query PostgreSQL at $PG_ADMIN_URL"
    if [ "$exists" != 1 ]; then
        log "creating database \"$db\""
        if ! err=$(pg_psql -c "create database \"${db//\"/\"\"}\"" 2>&1); then
            printf '%s' "$err" | grep -q 'already exists' || die "create database $db failed: $err"
        fi
    fi
}

setup_postgres() {
    local db
    parse_url "$DATABASE_URL" 5432
    db=${U_PATH:-postgres}
    db=${db//%2[dD]/-}
    # Admin connection: same server and credentials, maintenance db "postgres".
    PG_ADMIN_URL="${DATABASE_URL%%://*}://"
    if [ -n "$U_USER" ]; then
        PG_ADMIN_URL+="$U_USER"
        [ -n "$U_PASS" ] && PG_ADMIN_URL+=":$U_PASS"
        PG_ADMIN_URL+="@"
    fi
    PG_ADMIN_URL+="$U_HOST:$U_PORT/postgres"

    if is_local_host "$U_HOST"; then
        local host=${U_HOST:-127.0.0.1}
        [ "$host" = localhost ] && host=127.0.0.1
        host=${host#[}; host=${host%]}
        ensure_postgres_local "$host" "$U_PORT"
        ensure_database "$db"
    else
        tcp_open "$U_HOST" "$U_PORT" || die "PostgreSQL at $U_HOST:$U_PORT (DATABASE_URL) is not reachable"
    fi
}

# ---------------------------------------------------------------- RabbitMQ

rabbit_installed() {
    command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1
}

ensure_rabbit_local() {
    local host=$1 port=$2 deadline
    rabbit_installed || apt_install rabbitmq-server
    rabbit_installed || die "RabbitMQ still missing after apt-get install rabbitmq-server"

    tcp_open "$host" "$port" && return 0

    if timeout 15 rabbitmqctl -q status >/dev/null 2>&1; then
        log "RabbitMQ node is up but $host:$port is not open yet; waiting"
    else
        log "starting RabbitMQ (rabbitmq-server -detached)"
        rabbitmq-server -detached >/dev/null 2>&1 9>&- ||
            die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
    fi
    # await_startup needs the node to be registered first, so loop on both.
    deadline=$((SECONDS + RABBIT_WAIT_SECS))
    until tcp_open "$host" "$port"; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "RabbitMQ did not open $host:$port within ${RABBIT_WAIT_SECS}s (see /var/log/rabbitmq/)"
        timeout 10 rabbitmqctl -q await_startup --timeout 8 >/dev/null 2>&1 || sleep 2
    done
}

setup_rabbit() {
    local default_port=5672
    [[ $AMQP_URL == amqps://* ]] && default_port=5671
    parse_url "$AMQP_URL" "$default_port"
    if is_local_host "$U_HOST"; then
        local host=${U_HOST:-127.0.0.1}
        [ "$host" = localhost ] && host=127.0.0.1
        ensure_rabbit_local "$host" "$U_PORT"
    else
        tcp_open "$U_HOST" "$U_PORT" || die "RabbitMQ at $U_HOST:$U_PORT (AMQP_URL) is not reachable"
    fi
}

# ---------------------------------------------------------------- Redis

redis_installed() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1
}

redis_ping() { # redis_ping HOST PORT
    [ "$(timeout 3 redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ]
}

ensure_redis_local() {
    local host=$1 port=$2 deadline
    redis_installed || apt_install redis-server
    redis_installed || die "Redis still missing after apt-get install redis-server"

    redis_ping "$host" "$port" && return 0
    if tcp_open "$host" "$port"; then
        log "something listens on $host:$port but does not answer PING yet; waiting"
    else
        # No systemd needed. Limits and reservations are short-lived: no
        # snapshots, no append-only file; evict nothing (a reservation must
        # not vanish under memory pressure before it expires).
        log "starting redis-server on $host:$port"
        redis-server --daemonize yes --bind "$host" --port "$port" \
            --save '' --appendonly no --maxmemory-policy noeviction \
            --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/llmq-redis.log" \
            >/dev/null 9>&- || die "redis-server failed to start (see ${TMPDIR:-/tmp}/llmq-redis.log)"
    fi
    deadline=$((SECONDS + REDIS_WAIT_SECS))
    until redis_ping "$host" "$port"; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "Redis did not answer PING on $host:$port within ${REDIS_WAIT_SECS}s (see ${TMPDIR:-/tmp}/llmq-redis.log)"
        sleep 0.5
    done
}

setup_redis() {
    local default_port=6379
    [[ $REDIS_URL == rediss://* ]] && default_port=6380
    parse_url "$REDIS_URL" "$default_port"
    if is_local_host "$U_HOST"; then
        local host=${U_HOST:-127.0.0.1}
        [ "$host" = localhost ] && host=127.0.0.1
        host=${host#[}; host=${host%]}
        ensure_redis_local "$host" "$U_PORT"
    else
        tcp_open "$U_HOST" "$U_PORT" || die "Redis at $U_HOST:$U_PORT (REDIS_URL) is not reachable"
    fi
}

setup_postgres
setup_rabbit
setup_redis
