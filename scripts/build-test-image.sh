#!/usr/bin/env bash
# build-test-image.sh [OUTDIR]   (default OUTDIR: target/test-image in the repo)
#
# Builds vmscan's test fixture: a tiny self-booting x86_64 BIOS disk image
# (MBR + FAT16 + SYSLINUX + Debian cloud kernel + busybox/dropbear initramfs)
# that boots to SSH in ~8 s under software emulation (TCG). The root
# filesystem lives in RAM; the disk carries only the boot loader, kernel and
# initramfs. No loop devices, no mounts; root is needed only for apt-get.
#
# Cached: the outputs are rebuilt only when they are missing or when this
# script (or a tunable below) changed; the hash is kept in OUTDIR/.stamp, so a
# warm call returns at once. FORCE=1 rebuilds anyway. Concurrent calls for one
# OUTDIR wait for each other (flock).
#
# KERNEL_FLAVOR (env):
#   cloud   (default) Debian linux-image-cloud-amd64, LZ4-compressed -> fast
#           under TCG. Only virtio drivers (no e1000/AHCI): use virtio-net-pci
#           and attach disks (seed included) with if=virtio.
#   generic Debian linux-image-amd64: any NIC, AHCI; XZ kernel, ~15 s to SSH.
#
# Guest:
#   * DHCP (udhcpc) on the first NIC -> QEMU user networking + hostfwd to :22;
#     the host is reachable at 10.0.2.2 (busybox wget), static fallback 10.0.2.15
#   * dropbear SSH on :22 (pubkey + password), sftp-server, OpenSSH scp
#   * busybox /bin/sh, tar, gzip, wget ... (everything an agent installer needs)
#   * NoCloud seed: a disk labelled cidata/CIDATA (vfat or ISO9660) with
#     user-data/meta-data: ssh_authorized_keys, password, hostname /
#     local-hostname, users[].name/plain_text_passwd, runcmd/bootcmd
#   * powers off on the ACPI button (QMP system_powerdown) and on `poweroff`
#   * logs: /var/log/boot.log, messages, seed.log, runcmd.log; serial console
#     on ttyS0 (kernel messages + "testimg:" milestones, getty root/testpass)
#
# Outputs in OUTDIR: disk.raw disk.qcow2 disk.raw.tar.gz disk.raw.zip
#   vmlinuz initrd.img, id_ed25519{,.pub} (test key), seed-vfat.img (example
#   NoCloud seed), user-data meta-data build-info.txt
#
# Host packages (apt-get installed when missing and running as root, unless
# NO_APT=1): busybox-static dropbear-bin syslinux syslinux-common mtools
# dosfstools fdisk cpio openssh-client zip. The kernel and openssh-sftp-server
# packages are fetched with `apt-get download` into the cache and only unpacked.
#
# Tunables (env): IMAGE_MB=32 ROOT_PASSWORD=testpass (empty = key-only login)
#   DEFAULT_USER=debian IMG_HOSTNAME=testvm KERNEL_PKG=linux-image-6.1.0-NN-...
#   AUTHORIZED_KEYS_FILE=<file baked into root's authorized_keys>
#   CACHE_DIR=OUTDIR/.cache  COMPRESS=gzip|zstd|xz  NO_APT=1
#   KERNEL_APPEND="extra kernel args"  STRIP_MODSIG=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/target/test-image}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CACHE=${CACHE_DIR:-$OUT/.cache}
IMAGE_MB=${IMAGE_MB:-32}
ROOT_PASSWORD=${ROOT_PASSWORD-testpass}
DEFAULT_USER=${DEFAULT_USER:-debian}
IMG_HOSTNAME=${IMG_HOSTNAME:-testvm}
COMPRESS=${COMPRESS:-gzip}
KERNEL_FLAVOR=${KERNEL_FLAVOR:-cloud}
KERNEL_APPEND=${KERNEL_APPEND:-}

# ------------------------------------------------------------------- cache
OUTPUTS="disk.raw disk.qcow2 disk.raw.tar.gz disk.raw.zip vmlinuz initrd.img id_ed25519 id_ed25519.pub seed-vfat.img"
STAMP=$OUT/.stamp
WANT_STAMP=$( { cat "$0"; for v in IMAGE_MB ROOT_PASSWORD DEFAULT_USER IMG_HOSTNAME COMPRESS KERNEL_FLAVOR \
  KERNEL_APPEND KERNEL_PKG AUTHORIZED_KEYS_FILE STRIP_MODSIG; do echo "$v=${!v:-}"; done; } | sha256sum | cut -d' ' -f1)
up_to_date() {
  [ -z "${FORCE:-}" ] && [ -s "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] || return 1
  local o; for o in $OUTPUTS; do [ -s "$OUT/$o" ] || return 1; done
}
if up_to_date; then echo "test image up to date in $OUT" >&2; exit 0; fi
exec 9>"$OUT/.lock"
flock 9
if up_to_date; then echo "test image up to date in $OUT (built meanwhile)" >&2; exit 0; fi
rm -f "$STAMP"

mkdir -p "$CACHE"
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[build %6ss] %s\n' "$(elapsed)" "$*" >&2; }

# ---------------------------------------------------------------- host tools
APT_UPDATED=
apt_update() {
  [ -n "$APT_UPDATED" ] && return 0
  log "apt-get update"; apt-get update -qq >&2; APT_UPDATED=1
}
need=()
chk() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
chk dropbear dropbear-bin; chk dropbearkey dropbear-bin
chk syslinux syslinux; [ -e /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
chk mcopy mtools; chk mkfs.fat dosfstools; chk sfdisk fdisk; chk cpio cpio
chk qemu-img qemu-utils; chk ssh-keygen openssh-client; chk zip zip
chk gzip gzip
[ "$COMPRESS" = zstd ] && chk zstd zstd
[ "$COMPRESS" = xz ] && chk xz xz-utils
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then need+=(busybox-static); fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && [ -z "${NO_APT:-}" ]; then
    log "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
      { apt_update; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }
  else
    echo "missing packages: ${need[*]} (run as root, or install them)" >&2; exit 1
  fi
fi
[ -x /usr/bin/scp ] || log "note: /usr/bin/scp missing on host; image will only support sftp-mode scp"

# ------------------------------------------------------- kernel + sftp-server
fetch_deb() { # pkg -> path of .deb in cache
  local f; f=$(ls "$CACHE"/"$1"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    (cd "$CACHE" && apt-get download "$1" >&2) || { apt_update; (cd "$CACHE" && apt-get download "$1" >&2); }
    f=$(ls "$CACHE"/"$1"_*.deb | head -1)
  fi
  echo "$f"
}
case $KERNEL_FLAVOR in
  cloud|generic)
    meta=linux-image-amd64; [ "$KERNEL_FLAVOR" = cloud ] && meta=linux-image-cloud-amd64
    kpkg() { apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
    if [ -z "${KERNEL_PKG:-}" ]; then
      KERNEL_PKG=$(kpkg)
      [ -n "$KERNEL_PKG" ] || { apt_update; KERNEL_PKG=$(kpkg); }
    fi
    [ -n "$KERNEL_PKG" ] || { echo "cannot determine kernel package for $meta" >&2; exit 1; }
    KDIR=$CACHE/$KERNEL_PKG
    if [ ! -e "$KDIR/.done" ]; then
      log "downloading + unpacking $KERNEL_PKG"
      deb=$(fetch_deb "$KERNEL_PKG")
      rm -rf "$KDIR"; mkdir -p "$KDIR"
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR" --wildcards './boot/vmlinuz-*' './lib/modules/*'
      touch "$KDIR/.done"
    fi
    KVER=$(ls "$KDIR/lib/modules" | head -1)
    KIMG=$KDIR/boot/vmlinuz-$KVER ;;
  *) echo "KERNEL_FLAVOR must be cloud or generic" >&2; exit 1 ;;
esac
SFTPDIR=$CACHE/sftp
if [ ! -e "$SFTPDIR/.done" ]; then
  deb=$(fetch_deb openssh-sftp-server)
  rm -rf "$SFTPDIR"; mkdir -p "$SFTPDIR"; dpkg -x "$deb" "$SFTPDIR"; touch "$SFTPDIR/.done"
fi
# Debian's own sudo, so a seed's `sudo: "ALL=(ALL) NOPASSWD:ALL"` user works as on a cloud image
SUDODIR=$CACHE/sudo
if [ ! -e "$SUDODIR/.done" ]; then
  deb=$(fetch_deb sudo)
  rm -rf "$SUDODIR"; mkdir -p "$SUDODIR"; dpkg -x "$deb" "$SUDODIR"; touch "$SUDODIR/.done"
fi

# ----------------------------------------------------------- persistent keys
KEYS=$CACHE/keys; mkdir -p "$KEYS"
for t in ed25519 ecdsa rsa; do
  [ -s "$KEYS/dropbear_${t}_host_key" ] || dropbearkey -t $t -f "$KEYS/dropbear_${t}_host_key" >/dev/null 2>&1
done
[ -s "$OUT/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C testimg-key -f "$OUT/id_ed25519"

# ------------------------------------------------------------ initramfs tree
R=$OUT/.rootfs
rm -rf "$R"; mkdir -p "$R"
log "assembling initramfs tree"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/lib/openssh,etc/init.d,etc/dropbear,proc,sys,dev,run,tmp,root/.ssh,mnt/seed,boot,var/log,var/run,var/lib/seed,lib/x86_64-linux-gnu,lib64,usr/share/udhcpc}
chmod 1777 "$R/tmp"; chmod 700 "$R/root" "$R/root/.ssh"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list-full); do
  [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
ln -sf bin/busybox "$R/init"           # kernel runs /init -> busybox init (reads /etc/inittab)
copy_bin() { # src dst ; plus shared libs (ldd)
  install -D -m 0755 "$1" "$R$2"
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | while read -r lib; do
    case "$lib" in /lib64/*) d="$R/lib64/";; *) d="$R/lib/x86_64-linux-gnu/";; esac
    [ -e "$d$(basename "$lib")" ] || cp -L "$lib" "$d"
  done
}
copy_bin "$(command -v dropbear)" /usr/sbin/dropbear
copy_bin "$(command -v dropbearkey)" /usr/bin/dropbearkey
copy_bin "$SFTPDIR/usr/lib/openssh/sftp-server" /usr/lib/openssh/sftp-server
ln -s openssh/sftp-server "$R/usr/lib/sftp-server"   # dropbear's compiled-in SFTPSERVER_PATH
[ -x /usr/bin/scp ] && copy_bin /usr/bin/scp /usr/bin/scp
# sudo: setuid root (the cpio is packed as 0:0), its plugins, and PAM that
# permits (NOPASSWD rules never ask; the image has no PAM stack otherwise)
SUDOLIB=$SUDODIR/usr/libexec/sudo
LD_LIBRARY_PATH=$SUDOLIB copy_bin "$SUDODIR/usr/bin/sudo" /usr/bin/sudo
chmod 4755 "$R/usr/bin/sudo"
mkdir -p "$R/usr/libexec/sudo" "$R/etc/sudoers.d" "$R/etc/pam.d" "$R/lib/x86_64-linux-gnu/security"
for f in "$SUDOLIB"/libsudo_util.so* "$SUDOLIB"/sudoers.so; do
  cp -P "$f" "$R/usr/libexec/sudo/"
  [ -L "$f" ] || LD_LIBRARY_PATH=$SUDOLIB ldd "$f" 2>/dev/null | awk '/=> \//{print $3}' | while read -r lib; do
    case "$lib" in "$SUDOLIB"/*) continue;; esac
    [ -e "$R/lib/x86_64-linux-gnu/$(basename "$lib")" ] || cp -L "$lib" "$R/lib/x86_64-linux-gnu/"
  done
done
cp -L "$(ls /lib/x86_64-linux-gnu/security/pam_permit.so /usr/lib/x86_64-linux-gnu/security/pam_permit.so 2>/dev/null | head -1)" "$R/lib/x86_64-linux-gnu/security/"
printf 'auth required pam_permit.so\naccount required pam_permit.so\npassword required pam_permit.so\nsession required pam_permit.so\n' > "$R/etc/pam.d/sudo"
cp "$R/etc/pam.d/sudo" "$R/etc/pam.d/other"
printf 'Defaults env_reset\nDefaults secure_path="/usr/sbin:/usr/bin:/sbin:/bin"\nroot ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n' > "$R/etc/sudoers"
chmod 0440 "$R/etc/sudoers"; chmod 0755 "$R/etc/sudoers.d"
cp "$KEYS"/dropbear_*_host_key "$R/etc/dropbear/"

# kernel modules: wanted list + dependency closure, load order written to /etc/modules.load
ORDER=()
: > "$R/etc/modules.load"
MODSRC=$KDIR/lib/modules/$KVER
WANT="virtio_pci virtio_net e1000 e1000e virtio_blk virtio_scsi virtio_rng ata_piix ahci sd_mod sr_mod isofs vfat nls_cp437 nls_ascii nls_utf8 button evdev qemu_fw_cfg"
declare -A MPATH SEEN
while read -r p; do n=$(basename "$p" .ko); MPATH[${n//-/_}]=$p; done < <(cd "$MODSRC" && find kernel -name '*.ko')
strip_modsig() { # drop the appended PKCS#7 signature (kernel then loads it unsigned + taints)
  local f=$1 sz siglen
  [ "$(tail -c 28 "$f")" = "~Module signature appended~" ] || return 0
  sz=$(stat -c %s "$f")
  siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print $1*16777216+$2*65536+$3*256+$4}')
  truncate -s $((sz - 28 - 12 - siglen)) "$f"
}
visit() {
  local n=${1//-/_} d
  [ -n "${SEEN[$n]:-}" ] && return; SEEN[$n]=1
  [ -n "${MPATH[$n]:-}" ] || { echo "module $n not in this kernel (skipped)" >&2; return; }
  for d in $(tr '\0' '\n' < "$MODSRC/${MPATH[$n]}" | sed -n 's/^depends=//p' | tr ',' ' '); do visit "$d"; done
  ORDER+=("$n")
}
for m in $WANT; do visit "$m"; done
for n in "${ORDER[@]}"; do
  install -D -m 0644 "$MODSRC/${MPATH[$n]}" "$R/lib/modules/$KVER/${MPATH[$n]}"
  [ -n "${STRIP_MODSIG:-}" ] && strip_modsig "$R/lib/modules/$KVER/${MPATH[$n]}"
  args=""; [ "$n" = scsi_mod ] && args="scan=sync"
  echo "${MPATH[$n]} $args" >> "$R/etc/modules.load"
done
cp "$MODSRC"/modules.builtin* "$MODSRC"/modules.order "$R/lib/modules/$KVER/" 2>/dev/null || true
/bin/busybox depmod -b "$R" "$KVER" 2>/dev/null || true   # lets in-guest `modprobe` work too
echo "$KVER" > "$R/etc/kernel-release"

# ------------------------------------------------------------ config files
if [ -n "$ROOT_PASSWORD" ]; then PWHASH=$(/bin/busybox mkpasswd -m sha512 "$ROOT_PASSWORD"); else PWHASH='*'; fi
cat > "$R/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
$DEFAULT_USER:x:1000:1000:default user:/home/$DEFAULT_USER:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$R/etc/shadow" <<EOF
root:$PWHASH:19000:0:99999:7:::
$DEFAULT_USER:$PWHASH:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 600 "$R/etc/shadow"
printf 'root:x:0:\ntty:x:5:\nusers:x:100:\n%s:x:1000:\nnogroup:x:65534:\n' "$DEFAULT_USER" > "$R/etc/group"
printf '/bin/sh\n/bin/ash\n' > "$R/etc/shells"
echo "$IMG_HOSTNAME" > "$R/etc/hostname"
printf '127.0.0.1 localhost\n' > "$R/etc/hosts"
echo "$DEFAULT_USER" > "$R/etc/default-user"
mkdir -p "$R/home/$DEFAULT_USER/.ssh"; chmod 700 "$R/home/$DEFAULT_USER/.ssh"
: > "$R/root/.ssh/authorized_keys"
[ -n "${AUTHORIZED_KEYS_FILE:-}" ] && cat "$AUTHORIZED_KEYS_FILE" >> "$R/root/.ssh/authorized_keys"
chmod 600 "$R/root/.ssh/authorized_keys"
cat > "$R/etc/os-release" <<EOF
NAME="testimg"
ID=testimg
PRETTY_NAME="testimg busybox+dropbear fixture (kernel $KVER)"
EOF
printf 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1="\\u@\\h:\\w\\$ "\n' > "$R/etc/profile"

cat > "$R/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/dropbear -F -p 22 -r /etc/dropbear/dropbear_ed25519_host_key -r /etc/dropbear/dropbear_ecdsa_host_key -r /etc/dropbear/dropbear_rsa_host_key
::respawn:/sbin/pwrbtn-watch
::respawn:/sbin/serial-getty
::ctrlaltdel:/sbin/poweroff
::shutdown:/etc/init.d/rcK
EOF

cat > "$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
# start crng seeding (jitter entropy) early, so dropbear's getrandom() does not block later
(head -c 1 /dev/random > /dev/null) &
LOG=/var/log/boot.log
say() { u=$(cut -d' ' -f1 /proc/uptime); echo "testimg: [$u] $*"; echo "$u $*" >> $LOG; }
say "rcS start (kernel $(uname -r))"
syslogd -O /var/log/messages
klogd
hostname -F /etc/hostname
KVER=$(cat /etc/kernel-release)
case " $(cat /proc/cmdline) " in *" testimg.debug "*) DBG=1 ;; *) DBG= ;; esac
while read -r m args; do
  insmod /lib/modules/$KVER/$m $args 2>/dev/null
  [ -n "$DBG" ] && say "insmod ${m##*/}"
done < /etc/modules.load
say "modules loaded"
ip link set lo up
ok=
for n in /sys/class/net/*; do
  ifc=${n##*/}; [ "$ifc" = lo ] && continue
  ip link set "$ifc" up
  if udhcpc -i "$ifc" -f -q -n -t 5 -T 1 -s /usr/share/udhcpc/default.script >>/var/log/messages 2>&1; then ok=$ifc; break; fi
done
if [ -z "$ok" ] && [ -e /sys/class/net/eth0 ]; then
  ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up; route add default gw 10.0.2.2; echo nameserver 10.0.2.3 > /etc/resolv.conf; ok="eth0(static)"
fi
say "network: ${ok:-none} $(ip -4 -o addr show 2>/dev/null | awk '$2!="lo"{print $4}' | tr '\n' ' ')"
bootdev=$(findfs LABEL=TESTBOOT 2>/dev/null) && mount -o ro "$bootdev" /boot 2>/dev/null && say "boot partition $bootdev mounted ro on /boot"
/sbin/seed-config
say "READY: ssh on port 22 (hostname $(hostname))"
[ -s /var/lib/seed/runcmd.sh ] && (sh /var/lib/seed/runcmd.sh > /var/log/runcmd.log 2>&1; say "runcmd finished rc=$?") &
exit 0
EOF

cat > "$R/etc/init.d/rcK" <<'EOF'
#!/bin/sh
echo "testimg: shutting down"
echo "$(cut -d' ' -f1 /proc/uptime) shutdown requested" >> /var/log/boot.log
umount /boot 2>/dev/null
sync
EOF

cat > "$R/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ifconfig "$interface" 0.0.0.0 up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then
      while route del default gw 0.0.0.0 dev "$interface" 2>/dev/null; do :; done
      for r in $router; do route add default gw "$r" dev "$interface"; break; done
    fi
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
exit 0
EOF

cat > "$R/sbin/pwrbtn-watch" <<'EOF'
#!/bin/sh
# ACPI power button (QMP system_powerdown) -> poweroff.  The kernel 'button'
# driver turns the ACPI event into a KEY_POWER input event on /dev/input/eventN.
devs=
for i in 1 2 3 4 5 6 7 8 9 10; do
  for e in /sys/class/input/event*; do
    [ -r "$e/device/name" ] || continue
    case "$(cat "$e/device/name")" in *"Power Button"*) devs="$devs /dev/input/${e##*/}" ;; esac
  done
  [ -n "$devs" ] && break
  sleep 1
done
[ -z "$devs" ] && exec sleep 2147483647
for d in $devs; do
  ( dd if="$d" of=/dev/null bs=24 count=1 2>/dev/null && { logger -t pwrbtn "power button pressed"; poweroff; } ) &
done
wait
sleep 2147483647
EOF

cat > "$R/sbin/serial-getty" <<'EOF'
#!/bin/sh
# login prompt on ttyS0; if there is no usable serial port, idle instead of respawning in a loop
stty -F /dev/ttyS0 >/dev/null 2>&1 || exec sleep 2147483647
exec getty -L 115200 ttyS0 vt100
EOF

cat > "$R/sbin/seed-config" <<'EOF'
#!/bin/sh
# Minimal NoCloud (cloud-init) emulation.  Seed sources, all optional:
#   1. block device labelled cidata/CIDATA (ISO9660 or vfat) with user-data, meta-data
#   2. QEMU fw_cfg: opt/testimg/user-data, opt/testimg/meta-data, opt/testimg/authorized_keys
SLOG=/var/log/seed.log
S=/var/lib/seed
echo "seed-config start $(cut -d' ' -f1 /proc/uptime)" >> $SLOG
found=
for try in 1 2 3 4 5; do
  for dev in $(findfs LABEL=cidata 2>/dev/null) $(findfs LABEL=CIDATA 2>/dev/null); do
    if mount -o ro "$dev" /mnt/seed 2>>$SLOG; then
      if [ -e /mnt/seed/user-data ] || [ -e /mnt/seed/meta-data ]; then
        cp /mnt/seed/user-data $S/user-data 2>/dev/null; cp /mnt/seed/meta-data $S/meta-data 2>/dev/null
        cp /mnt/seed/network-config $S/network-config 2>/dev/null
        found=$dev
      fi
      umount /mnt/seed
    fi
    [ -n "$found" ] && break
  done
  [ -n "$found" ] && break
  # drivers probe synchronously (insmod waits; scsi_mod scan=sync), so one short retry is enough
  [ "$try" -ge 2 ] && break
  sleep 0.1
done
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/testimg
if [ -d $FW ]; then
  [ -r $FW/user-data/raw ] && cat $FW/user-data/raw >> $S/user-data && found="$found fw_cfg"
  [ -r $FW/meta-data/raw ] && cat $FW/meta-data/raw >> $S/meta-data
  [ -r $FW/authorized_keys/raw ] && sed 's/^/- /' $FW/authorized_keys/raw >> $S/fwkeys && found="$found fw_cfg-keys"
fi
echo "seed source: ${found:-none}" >> $SLOG
[ -z "$found" ] && exit 0
DEF=$(cat /etc/default-user)
cat $S/meta-data $S/user-data 2>/dev/null | awk '
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
function unq(s) { s = trim(s); if (s ~ /^".*"$/ || s ~ /^\047.*\047$/) s = substr(s, 2, length(s) - 2); return s }
function shq(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
function flow2sh(s,   i, ch, q, cur, out) {   # YAML flow list [a, "b c"] -> shell-quoted words
  q = ""; cur = ""; out = ""
  for (i = 1; i <= length(s); i++) {
    ch = substr(s, i, 1)
    if (q != "") { if (ch == q) q = ""; else cur = cur ch; continue }
    if (ch == "\"" || ch == "\047") { q = ch; continue }
    if (ch == ",") { out = out (out == "" ? "" : " ") shq(trim(cur)); cur = ""; continue }
    cur = cur ch
  }
  if (trim(cur) != "" || out != "") out = out (out == "" ? "" : " ") shq(trim(cur))
  return out
}
{
  line = $0; sub(/\r$/, "", line)
  if (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/ || line ~ /^---/) next
  if (line ~ /^[A-Za-z_-]+:/) {               # top-level key
    top = line; sub(/:.*/, "", top); val = line; sub(/^[^:]*:[ \t]*/, "", val); user = ""
    if (top == "password") print "PASS\t" unq(val)
    else if (top == "disable_root") print "DISROOT\t" unq(val)
    else if (top == "hostname" || top == "local-hostname" || top == "fqdn") print "HOST\t" unq(val)
    else if (top == "instance-id") print "IID\t" unq(val)
    next
  }
  if (top == "users") {
    if (line ~ /^[ \t]*-[ \t]*name:/) { u = line; sub(/^[ \t]*-[ \t]*name:[ \t]*/, "", u); user = unq(u); print "USER\t" user; next }
    if (line ~ /^[ \t]*-[ \t]*default[ \t]*$/) { print "USER\tdefault"; next }
    if (line ~ /^[ \t]*(plain_text_passwd|passwd_plain):/) { p = line; sub(/^[^:]*:[ \t]*/, "", p); print "UPASS\t" user "\t" unq(p); next }
    if (line ~ /^[ \t]*sudo:/) { p = line; sub(/^[^:]*:[ \t]*/, "", p); print "USUDO\t" user "\t" unq(p); next }
  }
  if ((top == "runcmd" || top == "bootcmd") && line ~ /^[ \t]*-/) {
    c = line; sub(/^[ \t]*-[ \t]*/, "", c)
    if (c ~ /^\[.*\]$/) c = flow2sh(substr(c, 2, length(c) - 2))
    else c = unq(c)
    print "RUN\t" c; next
  }
  if (line ~ /^[ \t]*-[ \t]*["\047]?(ssh-|ecdsa-|sk-)/) {
    k = line; sub(/^[ \t]*-[ \t]*/, "", k); print "KEY\t" (user == "" ? "-" : user) "\t" unq(k); next
  }
}' > $S/parsed
cat $S/parsed >> $SLOG
ensure_user() { # name -> home on stdout
  local u h uid
  u=$1; [ "$u" = default ] && u=$DEF
  if ! grep -q "^$u:" /etc/passwd; then
    uid=$((1000 + $(wc -l < /etc/passwd)))
    echo "$u:x:$uid:$uid::/home/$u:/bin/sh" >> /etc/passwd
    echo "$u:*:19000:0:99999:7:::" >> /etc/shadow
    echo "$u:x:$uid:" >> /etc/group
  fi
  h=$(awk -F: -v u="$u" '$1==u{print $6}' /etc/passwd)
  [ -d "$h" ] || { mkdir -p "$h"; chmod 755 "$h"; }
  mkdir -p "$h/.ssh"; chmod 700 "$h/.ssh"
  uid=$(awk -F: -v u="$u" '$1==u{print $3":"$4}' /etc/passwd); chown -R "$uid" "$h"
  echo "$h"
}
addkey() { local h; h=$(ensure_user "$1"); grep -qxF "$2" "$h/.ssh/authorized_keys" 2>/dev/null || echo "$2" >> "$h/.ssh/authorized_keys"
  chmod 600 "$h/.ssh/authorized_keys"; chown "$(stat -c %u:%g "$h")" "$h/.ssh/authorized_keys"; }
setpw() { # user password [hash]   (sha512-crypt is slow under TCG: reuse a hash when given)
  local u hash
  u=$1; [ "$u" = default ] && u=$DEF; ensure_user "$u" >/dev/null
  hash=${3:-$(mkpasswd -m sha512 "$2")} && sed -i "s|^$u:[^:]*:|$u:$hash:|" /etc/shadow; }
TAB=$(printf '\t')
: > $S/runcmd.sh; : > $S/rootkeys; ROOTOK=
# As cloud-init: a user's keys are that user's; top-level keys are the
# default user's, and root's only with `disable_root: false`.
while IFS="$TAB" read -r kind a b; do
  case "$kind" in
    KEY)  if [ "$a" != - ]; then addkey "$a" "$b"; else addkey "$DEF" "$b"; echo "$b" >> $S/rootkeys; fi ;;
    DISROOT) [ "$a" = false ] && ROOTOK=1 ;;
    USUDO) [ -n "$a" ] && [ "$a" != default ] && { ensure_user "$a" >/dev/null; echo "$a $b" >> /etc/sudoers.d/90-cloud-init-users; chmod 0440 /etc/sudoers.d/90-cloud-init-users; } ;;
    USER) ensure_user "$a" >/dev/null ;;
    PASS) pwh=$(mkpasswd -m sha512 "$a"); setpw root "$a" "$pwh"; setpw "$DEF" "$a" "$pwh" ;;
    UPASS) [ -n "$a" ] && setpw "$a" "$b" ;;
    HOST) hostname "$a"; echo "$a" > /etc/hostname ;;
    RUN)  echo "$a" >> $S/runcmd.sh ;;
  esac
done < $S/parsed
if [ -n "$ROOTOK" ]; then while read -r k; do addkey root "$k"; done < $S/rootkeys; fi
# fw_cfg keys (this image's own test hook, not cloud-init): root's and the default user's
[ -s $S/fwkeys ] && sed 's/^- //' $S/fwkeys | while read -r k; do addkey root "$k"; addkey "$DEF" "$k"; done
echo "seed-config done $(cut -d' ' -f1 /proc/uptime)" >> $SLOG
EOF
chmod 755 "$R/etc/init.d/rcS" "$R/etc/init.d/rcK" "$R/usr/share/udhcpc/default.script" "$R/sbin/pwrbtn-watch" "$R/sbin/seed-config" "$R/sbin/serial-getty"

# ------------------------------------------------------------ initramfs cpio
log "packing initramfs ($COMPRESS)"
# /dev/console must exist before devtmpfs is mounted; emit a hand-made newc
# entry so the build does not need mknod (works as non-root too).
newc_hdr() { # name mode rdevmajor rdevminor
  local name=$1 mode=$2 nsz=$((${#1} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
    1 "$mode" 0 0 1 0 0 0 0 "$3" "$4" "$nsz" 0 "$name"
  local pad=$(( (4 - (110 + nsz) % 4) % 4 )); head -c $pad /dev/zero
}
case $COMPRESS in gzip) Z="gzip -9 -n";; zstd) Z="zstd -19 -q";; xz) Z="xz -9 --check=crc32 -q";; esac
{
  { newc_hdr dev 16877 0 0; newc_hdr dev/console 8576 5 1; newc_hdr TRAILER!!! 0 0 0; } | $Z
  (cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | $Z
} > "$OUT/initrd.img"
cp "$KIMG" "$OUT/vmlinuz"

# ------------------------------------------------------------ disk image
log "building disk image (${IMAGE_MB} MiB, MBR + FAT16 + syslinux)"
W=$OUT/.work; rm -rf "$W"; mkdir -p "$W"
cat > "$W/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT testimg
PROMPT 0
TIMEOUT 0
LABEL testimg
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=tty0 console=ttyS0,115200n8 loglevel=5 panic=-1 cryptomgr.notests 8250.nr_uarts=1 $KERNEL_APPEND
EOF
PART_START=2048
PART_SECTORS=$(( IMAGE_MB * 2048 - PART_START ))
mkfs.fat -C -F 16 -n TESTBOOT -h $PART_START -i 7e57b007 "$W/part.img" $((PART_SECTORS / 2)) >/dev/null
mcopy -i "$W/part.img" "$OUT/vmlinuz" "$OUT/initrd.img" "$W/syslinux.cfg" ::/
syslinux --install "$W/part.img"
rm -f "$OUT/disk.raw"; truncate -s "${IMAGE_MB}M" "$OUT/disk.raw"
printf 'label: dos\nlabel-id: 0x7e57b007\nstart=%s, size=%s, type=6, bootable\n' $PART_START $PART_SECTORS | sfdisk -q "$OUT/disk.raw"
dd if="$W/part.img" of="$OUT/disk.raw" bs=512 seek=$PART_START conv=notrunc,sparse status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$OUT/disk.raw" bs=440 count=1 conv=notrunc status=none
rm -rf "$W"

# ------------------------------------------------------------ conversions
log "converting: qcow2, tar.gz, zip"
rm -f "$OUT/disk.qcow2" "$OUT/disk.raw.tar.gz" "$OUT/disk.raw.zip"
qemu-img convert -f raw -O qcow2 "$OUT/disk.raw" "$OUT/disk.qcow2"
tar -C "$OUT" -Sczf "$OUT/disk.raw.tar.gz" disk.raw
(cd "$OUT" && zip -q -9 disk.raw.zip disk.raw)

# ------------------------------------------------------------ example seeds
cat > "$OUT/user-data" <<EOF
#cloud-config
hostname: seeded-vm
password: seedpass
ssh_pwauth: true
ssh_authorized_keys:
  - $(cat "$OUT/id_ed25519.pub")
runcmd:
  - echo runcmd-ok > /var/log/runcmd-marker
EOF
printf 'instance-id: testimg-001\nlocal-hostname: seeded-vm\n' > "$OUT/meta-data"
rm -f "$OUT/seed-vfat.img"
mkfs.fat -C -n CIDATA "$OUT/seed-vfat.img" 1024 >/dev/null
mcopy -i "$OUT/seed-vfat.img" "$OUT/user-data" "$OUT/meta-data" ::/

{
  echo "kernel: flavor=$KERNEL_FLAVOR $KERNEL_PKG ($KVER)"
  echo "modules: ${ORDER[*]}"
  echo "compress: $COMPRESS"
  ls -l "$OUT"/disk.* "$OUT"/vmlinuz "$OUT"/initrd.img "$OUT"/seed*
  echo "build seconds: $(elapsed)"
} > "$OUT/build-info.txt"
rm -rf "$R"
log "done: $OUT/disk.raw ($(du -h --apparent-size "$OUT/disk.raw" | cut -f1) apparent, $(du -h "$OUT/disk.raw" | cut -f1) allocated)"
echo "$WANT_STAMP" > "$STAMP"
