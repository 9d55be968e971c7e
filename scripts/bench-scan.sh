#!/usr/bin/env bash
# Benchmark of whole scans on the local QEMU cluster: per-stage times, the
# guest's boot share, and per-scan time with 1-4 scans in parallel (ratios
# against the single-scan baseline on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
# Debug build: the scan is bound by qemu and the guest, not by vmscan's own code.
exec cargo test --test e2e_local_vm bench_scan -- --ignored --nocapture --test-threads=1
