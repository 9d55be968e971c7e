#!/usr/bin/env bash
# THE run command: builds vmscan and starts the daemon on its embedded
# defaults (SQLite under ./data, workers in-process). It prints the dashboard
# URL. Extra arguments go to `vmscan serve`, e.g. `--listen 0.0.0.0:8080`.
# Installs qemu-system-x86 when missing (the local QEMU cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs); this machine has none" >&2
    exit 1
fi
# qemu-img and qemu-system-x86_64 run the local "cluster" VMs.
scripts/install-test-deps.sh --runtime
cargo build --release --bin vmscan
config=()
[ -f config/vmscan.toml ] && config=(--config config/vmscan.toml)
exec target/release/vmscan "${config[@]}" serve "$@"
