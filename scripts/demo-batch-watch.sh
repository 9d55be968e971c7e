#!/usr/bin/env bash
# A batch and a watch, end to end, on the embedded defaults (SQLite, local
# artifact store), intake + publish stages only (no VM), files served by
# python's http.server on loopback.
#   scripts/demo-batch-watch.sh     (prints what a user would see)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin vmscan 2>&1 | tail -1
BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/vmscan
D=$(mktemp -d /tmp/vmscan-demo.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$D"' EXIT
mkdir -p "$D/srv/rocky" "$D/srv/alma"
head -c 3000000 /dev/urandom > "$D/srv/rocky/Rocky-9-GenericCloud-9.4.raw"
head -c 2000000 /dev/urandom > "$D/srv/alma/AlmaLinux-9-GenericCloud-9.4.raw"
head -c 1000000 /dev/urandom > "$D/srv/debian-12-generic-amd64.raw"
(cd "$D/srv/rocky" && sha256sum *.raw > SHA256SUMS)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$D/srv" "$PORT" >/dev/null 2>&1 &
B="http://127.0.0.1:$PORT"
export VMSCAN_STORAGE__DATA_DIR="$D/data" VMSCAN_SERVER__LISTEN=127.0.0.1:0 VMSCAN_LOG=warn
export VMSCAN_PIPELINE__STAGES='["fetch", "extract", "checksum", "inspect", "convert", "publish"]'
export VMSCAN_FETCH__DENY_CIDRS="[]" VMSCAN_WATCH__MIN_INTERVAL_SECS=2 VMSCAN_WATCH__POLL_MS=200
"$BIN" serve > "$D/serve.out" &
sleep 2
ROCKY=$(cut -d' ' -f1 "$D/srv/rocky/SHA256SUMS")
cat > "$D/manifest.yml" <<YML
owner: sam-team
images:
  rocky-9:
    name: rocky-9
    version: "9.4"
    get_url: $B/rocky/Rocky-9-GenericCloud-9.4.raw
    checksum: {type: sha256, value: "$ROCKY"}
    size: 20M
  alma-9:
    name: alma-9
    version: "9.4"
    get_url: $B/alma/AlmaLinux-9-GenericCloud-9.4.raw
  debian-12:
    name: debian-12
    version: "12.7"
    get_url: $B/debian-12-generic-amd64.raw
    checksum: {type: sha256, value: "0000000000000000000000000000000000000000000000000000000000000000"}
YML
echo "\$ vmscan submit -f manifest.yml --wait"
"$BIN" submit -f "$D/manifest.yml" --wait || echo "(exit $?)"
echo
echo "\$ vmscan watch add $B/rocky/ --kind listing --pattern 'Rocky-9-GenericCloud-*.raw' --checksum file:$B/rocky/SHA256SUMS --every 2s --name rocky-9"
W=$("$BIN" watch add "$B/rocky/" --kind listing --pattern 'Rocky-9-GenericCloud-*.raw' --checksum "file:$B/rocky/SHA256SUMS" --every 2s --name rocky-9)
echo "$W"
sleep 8
head -c 3100000 /dev/urandom > "$D/srv/rocky/Rocky-9-GenericCloud-9.5.raw"
(cd "$D/srv/rocky" && sha256sum *.raw > SHA256SUMS)
echo "(Rocky-9-GenericCloud-9.5.raw and a new SHA256SUMS appear)"
sleep 10
echo "\$ vmscan watch show $W"
"$BIN" watch show "$W"
echo
echo "the failed jobs say why:"
for j in $("$BIN" jobs | awk '/failed/{print $1}'); do
    "$BIN" job "$j" > "$D/job.txt"
    head -1 "$D/job.txt"
done
echo "\$ vmscan jobs"
"$BIN" jobs
echo
echo "published (local artifact store):"
find "$D/data/artifacts" -name '*.raw' -o -name '*.qcow2' | sed "s|$D/data/||" | sort
python3 - "$D/data/artifacts" <<'PY'
import json,glob,sys
for p in sorted(glob.glob(sys.argv[1]+"/**/*.properties.json", recursive=True)):
    d=json.load(open(p)); pr=d.get("properties",d)
    print(" ", pr.get("vmscan.name"), pr.get("vmscan.version"), "state="+str(pr.get("vmscan.state")))
PY
