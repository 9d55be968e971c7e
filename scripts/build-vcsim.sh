#!/usr/bin/env bash
# build-vcsim.sh [OUTDIR]   (default: the cache, linked as target/vcsim)
#
# Builds vcsim, VMware's vSphere API simulator, from Debian bookworm's
# golang-go and golang-github-vmware-govmomi-dev (the simulator library) and
# scripts/vcsim/main.go, offline (GOPATH mode, no module downloads). The
# tests of the vSphere provider start it (tests/vsphere.rs).
#
# Cached: built once per version of this script and main.go into
# ${VMSCAN_CACHE_DIR:-/var/cache/vmscan}/vcsim-HASH outside the clone (a fresh
# clone on a warm machine reuses it); target/vcsim links there. A warm call
# costs a stat. Packages: scripts/install-test-deps.sh installs them.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HASH=$(cat "$REPO/scripts/build-vcsim.sh" "$REPO/scripts/vcsim/main.go" | sha256sum | cut -c1-16)
CACHE=${VMSCAN_CACHE_DIR:-/var/cache/vmscan}
OUT=${1:-$CACHE/vcsim-$HASH}
log() { echo "[build-vcsim] $*" >&2; }

link() {
    if [ -z "${1:-}" ]; then
        mkdir -p "$REPO/target"
        local l=$REPO/target/vcsim
        if [ -d "$l" ] && [ ! -L "$l" ]; then rm -rf "$l"; fi
        ln -sfn "$OUT" "$l"
    fi
}

if [ -x "$OUT/vcsim" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$HASH" ]; then
    log "up to date in $OUT"; link "${1:-}"; exit 0
fi
GOPATH_PKGS=/usr/share/gocode
if ! command -v go >/dev/null 2>&1 || [ ! -d "$GOPATH_PKGS/src/github.com/vmware/govmomi/simulator" ]; then
    log "ERROR: needs golang-go and golang-github-vmware-govmomi-dev (run scripts/install-test-deps.sh)"
    exit 1
fi
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [ -x "$OUT/vcsim" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$HASH" ]; then
    log "up to date in $OUT (built meanwhile)"; link "${1:-}"; exit 0
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/gopath/src/vmscan-vcsim"
cp "$REPO/scripts/vcsim/main.go" "$T/gopath/src/vmscan-vcsim/main.go"
start=$SECONDS
# GOPATH mode: Debian's gocode tree has govmomi and its dependencies.
( cd "$T/gopath/src/vmscan-vcsim" &&
  GOPATH="$T/gopath:$GOPATH_PKGS" GO111MODULE=off GOCACHE="$T/cache" GOPROXY=off \
      go build -o "$T/vcsim" . )
mv "$T/vcsim" "$OUT/vcsim"
echo "$HASH" >"$OUT/.stamp"
log "built $OUT/vcsim in $((SECONDS - start))s"
link "${1:-}"
