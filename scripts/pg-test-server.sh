#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the test suite.
#   pg-test-server.sh start DIR  -> prints exactly one stdout line, the URL
#                                   postgres://postgres@127.0.0.1:PORT/vmscan_test
#   pg-test-server.sh stop DIR   -> fast shutdown (no-op if not running)
# Everything else goes to stderr or DIR/postgres.log, so callers can do
# URL=$(scripts/pg-test-server.sh start "$dir").
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
DATA=$DIR/data
log() { echo "[pg-test-server] $*" >&2; }

# Debian keeps the server binaries out of PATH; use the newest installed,
# else whatever initdb is on PATH (resolving symlinks to find pg_ctl etc.).
initdb_path=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1 || true)
[ -n "$initdb_path" ] || initdb_path=$(readlink -f "$(command -v initdb || true)" || true)
PGBIN=$(dirname "${initdb_path:-/nonexistent/initdb}")
if [ ! -x "$PGBIN/initdb" ]; then
    log "PostgreSQL server not found; run scripts/install-test-deps.sh"; exit 1
fi
# initdb/postgres refuse to run as root, so as root run them as the
# `postgres` OS user (created by Debian's postgresql packages).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
# Run from DIR so the postgres user never has to access the caller's cwd.
cd "$DIR"

case $cmd in
start)
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || { log "no 'postgres' OS user"; exit 1; }
        chown postgres: "$DIR"
        # postgres must be able to reach DIR (e.g. not under /root).
        runuser -u postgres -- test -w "$DIR" ||
            { log "user postgres cannot write $DIR (check parent dir permissions)"; exit 1; }
    fi
    [ ! -e "$DATA" ] || { log "$DATA already exists"; exit 1; }
    as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C \
        >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
    # Test-only settings: speed over durability, room for parallel test pools,
    # loopback only, and the unix socket kept inside DIR (not /var/run).
    cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
    # A free port from the kernel; another process could grab it before
    # postgres binds, so retry with a new port a few times.
    started=0
    for _ in 1 2 3 4 5; do
        PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        if as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -o "-p $PORT" -w -t 60 start >&2; then
            started=1; break
        fi
        log "start on port $PORT failed, retrying"
    done
    [ "$started" -eq 1 ] || { log "could not start postgres"; tail -n 30 "$DIR/postgres.log" >&2; exit 1; }
    echo "$PORT" >"$DIR/port"
    for _ in $(seq 1 120); do
        "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
        sleep 0.5
    done
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || { log "postgres never became ready"; exit 1; }
    "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres vmscan_test
    echo "postgres://postgres@127.0.0.1:$PORT/vmscan_test"
    ;;
stop)
    if [ -f "$DATA/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    else
        log "no server running in $DATA"
    fi
    ;;
*) usage ;;
esac
