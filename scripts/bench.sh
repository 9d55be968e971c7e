#!/usr/bin/env bash
# Store latency benchmark (issue 2) on both backends: starts a throwaway
# PostgreSQL, runs `cargo bench --bench store_latency` with
# VMSCAN_BENCH_PG_URL set, then stops and removes the cluster.
# Extra arguments go to `cargo bench`. Knobs (environment):
#   VMSCAN_BENCH_JOBS (100000), VMSCAN_BENCH_REQUESTS (300),
#   VMSCAN_BENCH_SUBMITS (200), VMSCAN_BENCH_KEEP=1 (keep the databases).
# With VMSCAN_BENCH_PG_URL already set, that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
if [ -z "${VMSCAN_BENCH_PG_URL:-}" ]; then
    # /tmp (not $TMPDIR) so the `postgres` OS user can reach it when we are
    # root, and the unix socket path stays short.
    PGDIR=$(mktemp -d /tmp/vmscan-bench-pg.XXXXXX)
    cleanup() {
        if [ "${VMSCAN_BENCH_KEEP:-}" = 1 ]; then
            echo "VMSCAN_BENCH_KEEP=1: PostgreSQL left running in $PGDIR" \
                "(scripts/pg-test-server.sh stop $PGDIR)" >&2
            return
        fi
        scripts/pg-test-server.sh stop "$PGDIR" >/dev/null 2>&1 || true
        rm -rf "$PGDIR"
    }
    trap cleanup EXIT
    VMSCAN_BENCH_PG_URL=$(scripts/pg-test-server.sh start "$PGDIR")
    echo "==> postgres at $VMSCAN_BENCH_PG_URL" >&2
fi
export VMSCAN_BENCH_PG_URL

cargo bench --bench store_latency "$@"
echo "==> bench.sh done in $((SECONDS - start)) s (build included)" >&2
