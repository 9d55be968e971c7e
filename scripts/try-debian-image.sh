#!/usr/bin/env bash
# try-debian-image.sh [IMAGE_DIR [AGENT_DIR]]
#
# Proves the Debian cloud fixture by hand, the way vmscan will use it, and
# prints timings: boots IMAGE_DIR/disk.qcow2 (through a throw-away overlay)
# under QEMU TCG with 1 GiB and 2 vCPUs and a NoCloud seed (vfat, label
# cidata) that creates a per-job user with passwordless sudo and a key; waits
# for the SSH banner; logs in with the key; checks `sudo -n true`; installs
# AGENT_DIR/managesoft_*_amd64.deb with dpkg -i after writing the rollout
# response file; checks `systemctl is-active ndtask mgsusageag`; runs
# `sudo /opt/managesoft/bin/ndtrack -t Machine` against a beacon listening on
# the host (the guest reaches it at 10.0.2.2) and checks the upload lines.
# Also checks that root and passwords are refused.
#
# Defaults: IMAGE_DIR=target/debian-image AGENT_DIR=target/test-agent.
# Env: MEM=1024 CPUS=2 SEED_USER=vmscan-job KEEP=1 (keep the work dir).
# Exit 0 only when every check passed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMG=$(realpath "${1:-$ROOT/target/debian-image}")
AGENT=$(realpath "${2:-$ROOT/target/test-agent}")
MEM=${MEM:-1024}
CPUS=${CPUS:-2}
SEED_USER=${SEED_USER:-vmscan-job}
DEB=$(ls "$AGENT"/managesoft_*_amd64.deb | head -1)
[ -s "$IMG/disk.qcow2" ] || { echo "no $IMG/disk.qcow2: run scripts/build-debian-image.sh" >&2; exit 1; }

W=$(mktemp -d /tmp/try-debian.XXXXXX)
QPID="" BPID=""
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true
  [ -n "$BPID" ] && kill "$BPID" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "work dir kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
T0=$(date +%s.%N)
t() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { printf '[try %6ss] %s\n' "$(t)" "$*" >&2; }
fail() { say "FAIL: $*"; tail -n 30 "$W/console.log" >&2 || true; exit 1; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ------------------------------------------------------------ beacon
# A throw-away HTTP listener that records each POST (path and hostname=),
# standing in for the beacon's ManageSoftRL share.
BPORT=$(free_port)
cat >"$W/beacon.py" <<'PY'
import sys, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
log = open(sys.argv[2], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        form = urllib.parse.parse_qs(body)
        host = form.get("hostname", [""])[0]
        inv = form.get("inventory", [""])[0]
        ok = self.path.startswith("/ManageSoftRL/") and host
        log.write(f"{self.command} {self.path} hostname={host} inventory_bytes={len(inv)} packages={inv.count('<Package ')}\n")
        self.send_response(200 if ok else 400); self.end_headers()
        self.wfile.write(b"upload accepted\n" if ok else b"no hostname in upload\n")
    def do_GET(self):
        log.write(f"GET {self.path}\n"); self.send_response(404); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
/usr/bin/python3 "$W/beacon.py" "$BPORT" "$W/beacon.log" &
BPID=$!

# ------------------------------------------------------------ seed + disk
ssh-keygen -q -t ed25519 -N '' -C try-debian -f "$W/key"
# Top-level keys go to the default user (debian) and, with cloud-init's
# disable_root, to root behind a "log in as debian" refusal.
cat >"$W/user-data" <<EOF
#cloud-config
ssh_authorized_keys:
  - $(cat "$W/key.pub")
users:
  - default
  - name: $SEED_USER
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - $(cat "$W/key.pub")
EOF
printf 'instance-id: try-%s\nlocal-hostname: vmscan-try\n' "$(date +%s)" >"$W/meta-data"
mkfs.fat -C -n CIDATA "$W/seed.img" 1024 >/dev/null
mcopy -i "$W/seed.img" "$W/user-data" "$W/meta-data" ::/
qemu-img create -q -f qcow2 -F qcow2 -b "$IMG/disk.qcow2" "$W/disk.qcow2"

SPORT=$(free_port)
say "booting $IMG/disk.qcow2 (TCG, ${MEM} MiB, $CPUS vCPUs), ssh on 127.0.0.1:$SPORT, beacon on :$BPORT"
qemu-system-x86_64 -machine pc -accel tcg -smp "$CPUS" -m "$MEM" -nodefaults -display none \
  -serial "file:$W/console.log" \
  -drive "file=$W/disk.qcow2,format=qcow2,if=virtio,cache=unsafe" \
  -drive "file=$W/seed.img,format=raw,if=virtio,readonly=on" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$SPORT-:22" -device virtio-net-pci,netdev=n0,romfile= \
  -device virtio-rng-pci &
QPID=$!

# Trap 5: user networking accepts before sshd listens; wait for the banner.
banner() { /usr/bin/python3 - "$SPORT" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
    s.settimeout(3)
    sys.exit(0 if s.recv(4).startswith(b"SSH-") else 1)
except Exception:
    sys.exit(1)
PY
}
until banner; do
  kill -0 "$QPID" 2>/dev/null || fail "qemu exited"
  awk -v a="$T0" -v b="$(date +%s)" 'BEGIN{exit !(b-a > 300)}' && fail "no SSH banner in 300 s"
  sleep 1
done
T_BANNER=$(t); say "SSH banner"
SSH=(ssh -q -i "$W/key" -p "$SPORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
     -o BatchMode=yes -o ConnectTimeout=10 -o IdentitiesOnly=yes)
# The user's key is installed by cloud-init after sshd starts: retry a while.
for i in $(seq 1 60); do
  "${SSH[@]}" "$SEED_USER@127.0.0.1" true 2>/dev/null && break
  [ "$i" -lt 60 ] || fail "no key login as $SEED_USER"
  sleep 1
done
T_LOGIN=$(t); say "key login as $SEED_USER"
g() { "${SSH[@]}" "$SEED_USER@127.0.0.1" "$@"; }
g 'sudo -n true' || fail "sudo -n true"
say "sudo -n true: ok"
g 'cloud-init status --wait >/dev/null; cloud-init status --long; systemctl is-system-running || true' >"$W/status.txt" 2>&1 || true
T_CLOUDINIT=$(t); say "cloud-init: $(grep -m1 '^status' "$W/status.txt"); system: $(tail -n1 "$W/status.txt")"
grep -q '^status: done' "$W/status.txt" || fail "cloud-init did not finish: $(cat "$W/status.txt")"
[ "$(tail -n1 "$W/status.txt")" = running ] || fail "system is $(tail -n1 "$W/status.txt"): $(g 'systemctl --failed --no-legend' 2>&1)"

# Cloud-image behaviour: the default user works, root and passwords do not.
[ "$("${SSH[@]}" debian@127.0.0.1 'sudo -n id -un')" = root ] || fail "default user debian: no key login or sudo"
say "default user debian: key login and sudo ok"
root_out=$("${SSH[@]}" root@127.0.0.1 'id -u' 2>&1 || true)
[ "$root_out" != 0 ] || fail "root logged in"
say "root refused: $(printf '%s' "$root_out" | head -c 90)"
# The methods sshd offers after the "none" probe: keys only.
methods=$( { ssh -v -p "$SPORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
  -o PreferredAuthentications=none "$SEED_USER@127.0.0.1" true 2>&1 || true; } |
  sed -n 's/.*Authentications that can continue: //p' | tr -d '\r' | head -n 1)
[ "$methods" = publickey ] || fail "sshd offers '$methods', not publickey only"
say "sshd offers: $methods"
g 'sudo sshd -T' | grep -Ei '^(permitrootlogin|passwordauthentication) ' >"$W/sshd.txt"
say "sshd: $(tr '\n' ' ' <"$W/sshd.txt")"

# ------------------------------------------------------------ agent
scp -q -i "$W/key" -P "$SPORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o BatchMode=yes "$DEB" "$SEED_USER@127.0.0.1:/tmp/" || fail "scp of the .deb"
g "printf 'MGSFT_BOOTSTRAP_DOWNLOAD=http://10.0.2.2:$BPORT/ManageSoftDL/\nMGSFT_BOOTSTRAP_UPLOAD=http://10.0.2.2:$BPORT/ManageSoftRL/\nMGSFT_RUNPOLICY=1\n' | sudo tee /var/tmp/mgsft_rollout_response >/dev/null"
T_I0=$(t)
g "sudo dpkg -i /tmp/$(basename "$DEB")" >"$W/dpkg.txt" 2>&1 || fail "dpkg -i: $(cat "$W/dpkg.txt")"
say "dpkg -i $(basename "$DEB"): ok ($(awk -v a="$T_I0" -v b="$(t)" 'BEGIN{printf "%.1f", b-a}') s)"
active=$(g 'systemctl is-active ndtask mgsusageag' | tr '\n' ' ')
[ "$active" = "active active " ] || fail "systemctl is-active ndtask mgsusageag: $active"
say "systemctl is-active ndtask mgsusageag: $active"
if g 'sudo grep -qs "Upload successful" /var/opt/managesoft/log/tracker.log'; then
  fail "an inventory was uploaded before ndtrack ran"
fi
[ ! -s "$W/beacon.log" ] || ! grep -q '^POST' "$W/beacon.log" || fail "the beacon got an upload before ndtrack ran"
if g '/opt/managesoft/bin/ndtrack -t Machine' 2>/dev/null; then fail "ndtrack ran without root"; fi
T_N0=$(t)
g 'sudo /opt/managesoft/bin/ndtrack -t Machine' || fail "ndtrack exited non-zero"
say "ndtrack -t Machine: done ($(awk -v a="$T_N0" -v b="$(t)" 'BEGIN{printf "%.1f", b-a}') s)"
g 'sudo cat /var/opt/managesoft/log/installation.log /var/opt/managesoft/log/tracker.log /var/opt/managesoft/log/policy.log' >"$W/agent-logs.txt"
grep -E 'Upload successful|Finished uploading inventory|Program exited successfully' "$W/agent-logs.txt" >&2 ||
  fail "no success lines: $(cat "$W/agent-logs.txt")"
grep -q 'Finished uploading inventory' "$W/agent-logs.txt" || fail "no 'Finished uploading inventory'"
grep -Eq '^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9:]{8} [0-9]{4} \(N, 0\)\] \{[0-9]+\} ' "$W/agent-logs.txt" ||
  fail "log lines not in the agent's format"
say "beacon received: $(grep '^POST' "$W/beacon.log" | tr '\n' ' ')"
grep -q "^POST /ManageSoftRL/Inventories/vmscan-try-.*hostname=vmscan-try " "$W/beacon.log" || fail "beacon got no inventory from vmscan-try"

# Upload=false: inventory made, nothing sent (FIA-CommandLine.html, flexera.md §1a).
posts=$(grep -c '^POST' "$W/beacon.log")
g 'sudo /opt/managesoft/bin/ndtrack -t Machine -o Upload=false' || fail "ndtrack -o Upload=false"
[ "$(grep -c '^POST' "$W/beacon.log")" = "$posts" ] || fail "ndtrack -o Upload=false uploaded"
g 'sudo tail -n 1 /var/opt/managesoft/log/tracker.log' | grep -q 'Upload=false: inventory not uploaded' || fail "no Upload=false line"
say "ndtrack -o Upload=false: nothing sent"
# Without the rollout response file the package refuses to configure.
g 'sudo rm /var/tmp/mgsft_rollout_response'
if g "sudo dpkg -i /tmp/$(basename "$DEB")" >"$W/dpkg2.txt" 2>&1; then fail "dpkg -i without a response file succeeded"; fi
grep -q 'rollout response file /var/tmp/mgsft_rollout_response is missing' "$W/dpkg2.txt" || fail "no reason given: $(cat "$W/dpkg2.txt")"
say "dpkg -i without the response file: refused ($(grep -m1 'managesoft:' "$W/dpkg2.txt"))"

echo
echo "== timings (s from qemu start): SSH banner $T_BANNER, key login $T_LOGIN, cloud-init done $T_CLOUDINIT"
echo "== all checks passed"
