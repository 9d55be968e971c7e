#!/usr/bin/env bash
# Intake benchmark: a raw image (SIZE_MIB, default 2048: a quarter random
# data, the rest zeros, like a real disk) packed as .tar.gz and served over
# local HTTP. Times vmscan's fetch → extract → checksum → inspect → convert
# against the sequential shell baseline
#   curl -o; sha256sum; tar xzf; qemu-img convert -O qcow2
# on the same machine in the same run, and reports vmscan's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-2048}
scripts/install-test-deps.sh --runtime >/dev/null
# BENCH_BIN times a given binary instead of this tree's release build.
if [ -z "${BENCH_BIN:-}" ]; then
    cargo build --release --bin vmscan 2>&1 | tail -1
fi
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/vmscan}

W=$(mktemp -d /tmp/vmscan-bench-intake.XXXXXX)
cleanup() {
    [ -n "${HTTP_PID:-}" ] && kill "$HTTP_PID" 2>/dev/null || true
    [ -n "${VM_PID:-}" ] && kill "$VM_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
command -v curl >/dev/null || apt-get install -y -qq curl >/dev/null
mkdir -p "$W/srv" "$W/img" "$W/base"

echo "== building a ${SIZE_MIB} MiB raw image and its .tar.gz"
random=$((SIZE_MIB / 4))
head -c "$((random * 1024 * 1024))" /dev/urandom > "$W/img/disk.raw"
truncate -s "${SIZE_MIB}M" "$W/img/disk.raw"
# Zeros written for real: a sparse hole would flatter tar on both sides.
dd if=/dev/zero of="$W/img/disk.raw" bs=1M seek="$random" count="$((SIZE_MIB - random))" conv=notrunc status=none
tar -C "$W/img" -I 'gzip -1' -cf "$W/srv/disk.raw.tar.gz" disk.raw
rm "$W/img/disk.raw"
SHA=$(sha256sum "$W/srv/disk.raw.tar.gz" | cut -d' ' -f1)
echo "   archive: $(du -h "$W/srv/disk.raw.tar.gz" | cut -f1)"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$W/srv" "$PORT" >/dev/null 2>&1 &
HTTP_PID=$!
sleep 1
URL="http://127.0.0.1:$PORT/disk.raw.tar.gz"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

echo "== baseline: curl; sha256sum; tar xzf; qemu-img convert"
t0=$(now)
curl -sf -o "$W/base/disk.raw.tar.gz" "$URL"
sha256sum "$W/base/disk.raw.tar.gz" >/dev/null
tar -C "$W/base" -xzf "$W/base/disk.raw.tar.gz"
qemu-img convert -O qcow2 "$W/base/disk.raw" "$W/base/disk.qcow2"
t1=$(now)
BASE=$(calc "$t1 - $t0")
rm -rf "$W/base"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

echo "== vmscan: fetch → extract → checksum → inspect → convert"
export VMSCAN_STORAGE__DATA_DIR="$W/data" VMSCAN_SERVER__LISTEN=127.0.0.1:0 VMSCAN_LOG=warn
export VMSCAN_PIPELINE__STAGES='["fetch", "extract", "checksum", "inspect", "convert"]'
# The bench serves the image from loopback, which fetch refuses by default.
export VMSCAN_FETCH__DENY_CIDRS="[]"
"$BIN" serve > "$W/serve.out" &
VM_PID=$!
sleep 1
t0=$(now)
"$BIN" submit "$URL" --checksum "sha256:$SHA" --wait > "$W/job.out" || { cat "$W/job.out"; exit 1; }
t1=$(now)
VMSCAN=$(calc "$t1 - $t0")
RSS_KIB=$(awk '/VmHWM/{print $2}' "/proc/$VM_PID/status")
grep -E "^(fetch|extract|checksum|inspect|convert) " "$W/job.out" | sed 's/^/   /'

echo
printf '%-34s %8.1f s\n' "baseline (curl; sha256sum; tar; qemu-img)" "$BASE"
printf '%-34s %8.1f s\n' "vmscan (fetch…convert, verified)" "$VMSCAN"
printf '%-34s %8.2f x baseline (goal <= 0.15)\n' "ratio" "$(calc "$VMSCAN / $BASE")"
printf '%-34s %8.1f MiB (goal <= 64)\n' "vmscan daemon peak RSS" "$(calc "$RSS_KIB / 1024")"
printf '%-34s %s\n' "load average (1, 5, 15 min)" "$(cut -d' ' -f1-3 /proc/loadavg)"
