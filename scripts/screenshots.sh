#!/usr/bin/env bash
# Screenshots of the main pages (dashboard, job pages of a succeeded, failed,
# waiting and running job, catalog, insights, scan report) into
# target/screenshots/, taken by the browser tests in headless Chromium.
#   scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
out=$PWD/target/screenshots
mkdir -p "$out"
VMSCAN_SCREENSHOT_DIR=$out cargo test --test api -- dashboard:: --test-threads=1
ls -l "$out"
