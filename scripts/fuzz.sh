#!/usr/bin/env bash
# Runs the parser property tests (tests/parsers_prop.rs) for longer than CI:
#   scripts/fuzz.sh              20000 cases per property, once
#   scripts/fuzz.sh 5000         5000 cases per property, once
#   scripts/fuzz.sh 30m          rounds of VMSCAN_FUZZ_ROUND (2000) cases per
#                                property, each with fresh random seeds, until
#                                30 minutes are up (s, m or h)
# A second argument filters the properties by name (e.g. `archives`).
# VMSCAN_FUZZ_CARGO_ARGS: extra arguments for cargo (e.g. --config ...).
# Built with the test profile, overflow checks on, as CI builds it. Prints a
# summary; exits 1 at the first failing round, with proptest's minimal input.
set -euo pipefail
cd "$(dirname "$0")/.."

arg=${1:-20000}
filter=${2:-}
round=${VMSCAN_FUZZ_ROUND:-2000}
read -r -a cargo_args <<<"${VMSCAN_FUZZ_CARGO_ARGS:-}"

deadline=
case "$arg" in
    *[0-9]s) deadline=$((SECONDS + ${arg%s})) ;;
    *[0-9]m) deadline=$((SECONDS + ${arg%m} * 60)) ;;
    *[0-9]h) deadline=$((SECONDS + ${arg%h} * 3600)) ;;
    *[!0-9]* | '')
        echo "usage: $0 [CASES | DURATION (30s, 10m, 2h)] [FILTER]" >&2
        exit 2
        ;;
    *) round=$arg ;;
esac

cargo test "${cargo_args[@]}" --test parsers_prop --no-run >&2
log=$(mktemp -d /tmp/vmscan-fuzz.XXXXXX)
start=$SECONDS
rounds=0
cases=0
while :; do
    rounds=$((rounds + 1))
    out="$log/round-$rounds.txt"
    rc=0
    PROPTEST_CASES=$round cargo test "${cargo_args[@]}" -q --test parsers_prop -- $filter >"$out" 2>&1 || rc=$?
    passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$out" | tail -1)
    cases=$((cases + round * ${passed:-0}))
    if [ "$rc" -ne 0 ]; then
        grep -E '^test .* FAILED|Test failed|minimal failing input|panicked at' "$out" >&2 || true
        echo "fuzz: round $rounds FAILED after $((SECONDS - start))s; full output in $out" >&2
        exit 1
    fi
    echo "fuzz: round $rounds ok: ${passed:-0} properties x $round cases ($((SECONDS - start))s)" >&2
    if [ -z "$deadline" ] || [ "$SECONDS" -ge "$deadline" ]; then
        break
    fi
done
rm -rf "$log"
echo "fuzz: $rounds round(s), about $cases cases over ${passed:-0} properties, no failure, in $((SECONDS - start))s"
