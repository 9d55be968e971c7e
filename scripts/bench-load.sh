#!/usr/bin/env bash
# Load and soak benchmark (issue 16): 2 `vmscan serve` replicas (release
# build) on a throwaway PostgreSQL, 200 API clients for 5 minutes, one
# replica SIGKILLed and restarted every minute. Prints requests/s and
# p50/p99 per endpoint, errors, whether every job ended exactly once, and
# each process's peak RSS and open file descriptors. Exits non-zero when it
# finds an error. Knobs (environment): VMSCAN_LOAD_SECS (300),
# VMSCAN_LOAD_CLIENTS (200), VMSCAN_LOAD_USERS (20), VMSCAN_LOAD_KILL_SECS
# (60, 0 = never), VMSCAN_LOAD_THINK_MS (100), VMSCAN_LOAD_SUBMIT_SECS (30).
# With VMSCAN_BENCH_PG_URL already set, that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
if [ -z "${VMSCAN_BENCH_PG_URL:-}" ]; then
    PGDIR=$(mktemp -d /tmp/vmscan-load-pg.XXXXXX)
    cleanup() {
        scripts/pg-test-server.sh stop "$PGDIR" >/dev/null 2>&1 || true
        rm -rf "$PGDIR"
    }
    trap cleanup EXIT
    VMSCAN_BENCH_PG_URL=$(scripts/pg-test-server.sh start "$PGDIR")
    echo "==> postgres at $VMSCAN_BENCH_PG_URL" >&2
fi
export VMSCAN_BENCH_PG_URL
# 200 clients' connections plus the replicas' pools.
ulimit -n 65536 2>/dev/null || true
cargo bench --bench load "$@"
echo "==> bench-load.sh done in $((SECONDS - start)) s (build included)" >&2
