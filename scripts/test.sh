#!/usr/bin/env bash
# THE test command (local and CI): installs missing test dependencies, starts
# a throwaway PostgreSQL for the Postgres-backend tests, then runs fmt,
# clippy and `cargo test`. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh --test api -- some_filter
# Plain `cargo test` (not nextest) so its `test result: ok. N passed` lines
# are printed per test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs "$@", printing the step's wall time whether it passes or fails.
step() {
    local label=$1 start=$SECONDS rc=0
    shift
    echo "==> $label" >&2
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "<== $label: ok in $((SECONDS - start))s" >&2
    else
        echo "<== $label: FAILED (exit $rc) after $((SECONDS - start))s" >&2
    fi
    return "$rc"
}

step "install test deps" scripts/install-test-deps.sh

# /tmp (not $TMPDIR) so the `postgres` OS user can reach it when we are root
# and the unix socket path stays short.
PGDIR=$(mktemp -d /tmp/vmscan-pg.XXXXXX)
cleanup() {
    scripts/pg-test-server.sh stop "$PGDIR" >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
}
trap cleanup EXIT
start=$SECONDS
VMSCAN_TEST_PG_URL=$(scripts/pg-test-server.sh start "$PGDIR")
export VMSCAN_TEST_PG_URL
echo "<== postgres at $VMSCAN_TEST_PG_URL in $((SECONDS - start))s" >&2

step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets -- -D warnings
step "cargo test" cargo test "$@"
