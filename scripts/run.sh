#!/usr/bin/env bash
# THE run command: builds vmscan and starts the daemon on its embedded
# defaults (SQLite under ./data, workers in-process). It prints the dashboard
# URL. Extra arguments go to `vmscan serve`, e.g. `--listen 0.0.0.0:8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs); this machine has none" >&2
    exit 1
fi
cargo build --bin vmscan
config=()
[ -f config/vmscan.toml ] && config=(--config config/vmscan.toml)
exec target/debug/vmscan "${config[@]}" serve "$@"
