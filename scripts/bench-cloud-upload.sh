#!/usr/bin/env bash
# Cloud upload benchmark (issue 7): a >= 2 GiB image to the fake Prism
# Central, once with `curl -T` (the baseline) and once with the Nutanix
# provider's whole upload (create, stream, tasks), in one run
# (tests/clouds/nutanix.rs bench_nutanix_upload). Prints seconds, MB/s, the
# ratio and the peak RSS of the process holding both client and fake.
# Env: BENCH_SIZE_MIB (default 2048).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${BENCH_SIZE_MIB:-2048}
tmp=$(mktemp -d /tmp/bench-cloud.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
echo "== building (release)"
cargo test --release --test clouds --no-run 2>&1 | tail -n 1
echo "== a ${SIZE_MIB} MiB file of random data"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$tmp/image.img"
cat "$tmp/image.img" > /dev/null
BENCH_FILE=$tmp/image.img cargo test -q --release --test clouds -- --ignored --nocapture --exact \
    nutanix::bench_nutanix_upload 2>&1 | grep -v '^$' | grep -v '^running\|^test result'
