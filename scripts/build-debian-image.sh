#!/usr/bin/env bash
# build-debian-image.sh OUT_DIR
#
# Builds vmscan's second VM fixture: a Debian 12 (bookworm) cloud image made
# from Debian packages, as a compressed qcow2, that behaves like the images
# real teams scan: systemd, linux-image-cloud-amd64, OpenSSH, cloud-init
# reading a NoCloud seed (label cidata, iso9660 or vfat), DHCP through
# ifupdown, sudo, dpkg, journald. cloud-init creates its default user
# `debian` (and any seeded users) at first boot; SSH takes keys only.
#
# Why no loop devices or mounts: this host's kernel has no partition
# scanning, vfat, iso9660 or device-mapper, and update-grub writes no entries
# for a loop-backed root (../shared/reference/debian-cloud-fixture.md, traps
# 1, 2, 7). So the root file system is made from a directory (mke2fs -d), the
# disk is assembled with dd, and GRUB's BIOS boot code is written the way
# grub-bios-setup writes it (boot.img in the MBR, core.img from sector 1).
#
# Outputs in OUT_DIR (made in OUT_DIR.tmp.* and renamed into place only when
# complete, so a failed or interrupted build leaves no half image):
#   disk.qcow2       the image (2 GiB virtual, zlib-compressed qcow2)
#   id_ed25519{,.pub} a test key pair for seeds (not baked into the image)
#   packages.txt     the installed packages (name version)
#   build-info.txt   mirror, kernel, sizes, build seconds
#   .stamp           hash of this script and the tunables that shaped it
#
# Tunables (env): DISK_MB=2048  HARDENED=1 (PermitRootLogin no; default is
#   Debian's prohibit-password)  MIRROR=<Debian URI>  SECURITY_MIRROR=<URI>
#   (default: the ones this machine's apt uses)  FORCE=1 rebuilds.
# Needs root (mmdebstrap --mode=root, chroot). Installs mmdebstrap, qemu-utils
# e2fsprogs and fdisk from Debian when missing. Takes 6-15 min, ~300 MB of
# downloads.
set -euo pipefail
export LC_ALL=C.UTF-8

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root (mmdebstrap, chroot)" >&2; exit 1; }
OUT=$(realpath -m "$1")
DISK_MB=${DISK_MB:-2048}
HARDENED=${HARDENED:-}
PART_START=2048                       # sectors: 1 MiB, room for core.img
STAMP_WANT=$( { cat "$0"; echo "DISK_MB=$DISK_MB HARDENED=$HARDENED MIRROR=${MIRROR:-} SECURITY_MIRROR=${SECURITY_MIRROR:-}"; } |
  sha256sum | cut -d' ' -f1)

up_to_date() {
  [ -z "${FORCE:-}" ] && [ -s "$OUT/disk.qcow2" ] && [ -s "$OUT/.stamp" ] &&
    [ "$(cat "$OUT/.stamp")" = "$STAMP_WANT" ]
}
if up_to_date; then echo "debian image up to date in $OUT" >&2; exit 0; fi
mkdir -p "$(dirname "$OUT")"
exec 9>"$OUT.lock"
flock 9
if up_to_date; then echo "debian image up to date in $OUT (built meanwhile)" >&2; exit 0; fi

T0=$SECONDS
log() { printf '[debian-image %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }

# Leftovers of a build that was killed outright (the lock says none runs).
# --one-file-system: never descend into a mount a killed mmdebstrap left.
for stale in "$OUT".tmp.*; do
  [ -d "$stale" ] || continue
  log "removing the leftover $stale"
  rm -rf --one-file-system "$stale" || log "WARNING: could not remove all of $stale (a mount inside?)"
done
TMP=$(mktemp -d "$OUT.tmp.XXXXXX")
chmod 755 "$TMP"   # apt's _apt user downloads into it
ROOTFS=$TMP/rootfs
cleanup() { rm -rf --one-file-system "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ------------------------------------------------------------ host tools
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
    { apt-get update -qq || log "apt-get update reported errors (unreachable extra sources?); trying the install anyway"
      apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }
fi

# ------------------------------------------------------------ mirrors
# The same Debian mirror this machine's apt uses (CI reaches only those).
host_uri() { # suite -> first URI whose stanza/line lists that suite
  local suite=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk -v s="$suite" 'BEGIN{RS=""} {u=""; ok=0
      n=split($0, L, "\n"); for (i=1;i<=n;i++) {
        if (L[i] ~ /^URIs:/) { split(L[i], w, /[ \t]+/); u=w[2] }
        if (L[i] ~ /^Suites:/) { m=split(L[i], w, /[ \t]+/); for (j=2;j<=m;j++) if (w[j]==s) ok=1 } }
      if (ok && u != "") { print u; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk -v s="$suite" '$1=="deb" { for (i=2;i<NF;i++) if ($i ~ /^https?:/ && $(i+1)==s) { print $i; exit } }' "$f"
  done
}
MIRROR=${MIRROR:-$(host_uri bookworm | head -1)}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_uri bookworm-security | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
log "mirrors: $MIRROR, $SECURITY_MIRROR"

# ------------------------------------------------------------ customize hook
# Runs on the host after all packages are installed, with mmdebstrap's
# /proc, /sys and /dev mounted in the chroot ($1).
UUID=$(cat /proc/sys/kernel/random/uuid)
cat >"$TMP/customize.sh" <<EOF
#!/bin/sh
set -eu
R=\$1
case \$R in /?*) ;; *) echo "customize: bad root '\$R'" >&2; exit 1 ;; esac
[ "\$R" != / ] && [ -d "\$R/etc/apt" ] || { echo "customize: '\$R' is not the new root" >&2; exit 1; }
UUID=$UUID
HARDENED='$HARDENED'
EOF
cat >>"$TMP/customize.sh" <<'EOF'
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }

# Trap 8: mmdebstrap's --aptopt settings must not follow the image.
rm -f "$R/etc/apt/apt.conf.d/99mmdebstrap"

# Trap 4: cloud-init's locale module sets en_US.UTF-8; ungenerated, the
# system ends "degraded". Debian's locale-gen reads only /etc/locale.gen.
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$R/etc/locale.gen"
grep -q '^en_US.UTF-8 UTF-8' "$R/etc/locale.gen" || echo 'en_US.UTF-8 UTF-8' >>"$R/etc/locale.gen"
in_root locale-gen >/dev/null
echo 'LANG=C.UTF-8' >"$R/etc/default/locale"

echo "UUID=$UUID / ext4 rw,discard,errors=remount-ro 0 1" >"$R/etc/fstab"
echo debian >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"

# DHCP through ifupdown: cloud-init renders interfaces.d/50-cloud-init from
# the seed's network-config or its fallback (first NIC, DHCP).
cat >"$R/etc/network/interfaces" <<'IF'
# cloud-init writes the NIC configuration into interfaces.d.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
IF
mkdir -p "$R/etc/network/interfaces.d"

# SSH the way cloud images ship it: keys only; root as Debian's default
# (prohibit-password) or, hardened, not at all. Host keys are made at first
# boot by cloud-init, so no two VMs share them.
mkdir -p "$R/etc/ssh/sshd_config.d"
{
  echo "# vmscan Debian cloud fixture (scripts/build-debian-image.sh)"
  echo "PasswordAuthentication no"
  echo "KbdInteractiveAuthentication no"
  if [ -n "$HARDENED" ]; then echo "PermitRootLogin no"; fi
} >"$R/etc/ssh/sshd_config.d/50-cloud-image.conf"
rm -f "$R"/etc/ssh/ssh_host_*

# cloud-init: Debian's packaged cloud.cfg already names the default user
# `debian` (passwordless sudo, keys from the seed). Say nothing about
# passwords, as Debian's cloud images do: ssh_pwauth then leaves sshd alone.
cat >"$R/etc/cloud/cloud.cfg.d/01_vmscan_fixture.cfg" <<'CC'
# vmscan Debian cloud fixture: the seed's settings plus Debian's defaults.
manage_etc_hosts: localhost
apt:
  preserve_sources_list: true
CC

# GRUB for BIOS, as grub-install would lay it out (modules under
# /boot/grub/i386-pc, core.img there too), with a grub.cfg written here
# because update-grub finds no kernels on a loop-backed root (trap 2).
mkdir -p "$R/boot/grub/i386-pc"
cp "$R"/usr/lib/grub/i386-pc/*.mod "$R"/usr/lib/grub/i386-pc/*.lst "$R/boot/grub/i386-pc/"
in_root grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img \
  -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2 normal linux search search_fs_uuid serial terminal
cp "$R/usr/lib/grub/i386-pc/boot.img" "$R/boot/grub/i386-pc/boot.img"
cat >"$R/boot/grub/grub.cfg" <<CFG
# Written by scripts/build-debian-image.sh (update-grub cannot on this host).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
search --no-floppy --fs-uuid --set=root $UUID
menuentry 'Debian GNU/Linux 12 (cloud fixture)' {
  linux /vmlinuz root=UUID=$UUID ro console=tty0 console=ttyS0,115200n8 consoleblank=0
  initrd /initrd.img
}
CFG
[ -e "$R/vmlinuz" ] && [ -e "$R/initrd.img" ] || { echo "no /vmlinuz or /initrd.img in the image" >&2; exit 1; }

# First-boot identity: systemd makes the machine id, cloud-init the rest.
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
rm -rf "$R/var/lib/cloud"/* "$R/var/log/cloud-init"*
# Small image: no package lists or caches (a real image refreshes them).
in_root apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/debconf/*-old "$R"/tmp/* "$R"/var/tmp/*
find "$R/var/log" -type f -exec truncate -s 0 {} +
in_root dpkg-query -W -f '${Package} ${Version}\n' >"$R/../packages.txt"
EOF
chmod 755 "$TMP/customize.sh"

# ------------------------------------------------------------ root file system
# grub-pc-bin rather than grub-pc: the boot code is written by this script;
# grub-pc's postinst would want a boot device (trap 3).
PKGS=linux-image-cloud-amd64,systemd-sysv,dbus,libpam-systemd,openssh-server,openssh-sftp-server
PKGS+=,cloud-init,cloud-guest-utils,sudo,ifupdown,isc-dhcp-client,netbase,locales,grub-pc-bin
PKGS+=,initramfs-tools,curl,wget,ca-certificates,procps,less,python3
log "mmdebstrap bookworm (variant important + cloud packages)"
# mmdebstrap installs no Recommends (its 00mmdebstrap, removed at the end).
# Its own apt cleanup runs `apt-get update` with no sources and `apt-get
# clean`; the host's lists were found emptied after a build that let it, so
# the hook cleans the chroot's lists and cache itself and both are skipped.
HOST_LISTS=$(ls /var/lib/apt/lists | wc -l)
mmdebstrap --mode=root --variant=important --components=main \
  --skip=cleanup/apt/lists,cleanup/apt/cache \
  --include="$PKGS" \
  --customize-hook="\"$TMP/customize.sh\" \"\$1\"" \
  bookworm "$ROOTFS" \
  "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
  "deb $SECURITY_MIRROR bookworm-security main" >&2
[ "$(ls /var/lib/apt/lists | wc -l)" -ge "$HOST_LISTS" ] ||
  log "WARNING: the host's /var/lib/apt/lists lost files during mmdebstrap (run apt-get update)"
KVER=$(basename "$(readlink "$ROOTFS/vmlinuz")" | sed 's/^vmlinuz-//')
log "root file system: $(du -sh --one-file-system "$ROOTFS" | cut -f1), kernel $KVER, $(wc -l <"$TMP/packages.txt") packages"

# ------------------------------------------------------------ disk
# Trap 1: no loop devices. The ext4 file system is made from the directory.
PART_SECTORS=$((DISK_MB * 2048 - PART_START))
log "ext4 root ($((PART_SECTORS / 2048)) MiB) from the directory"
mke2fs -q -t ext4 -L debian-root -U "$UUID" -E root_owner=0:0 -d "$ROOTFS" \
  "$TMP/root.img" "$((PART_SECTORS / 2))k" >/dev/null
cp "$ROOTFS/boot/grub/i386-pc/boot.img" "$ROOTFS/boot/grub/i386-pc/core.img" "$TMP/"
rm -rf --one-file-system "$ROOTFS"
CORE_BYTES=$(stat -c %s "$TMP/core.img")
[ "$CORE_BYTES" -lt $(((PART_START - 1) * 512)) ] || { echo "core.img ($CORE_BYTES bytes) does not fit before the partition" >&2; exit 1; }

truncate -s "${DISK_MB}M" "$TMP/disk.raw"
printf 'label: dos\nlabel-id: 0x%s\nstart=%s, size=%s, type=83, bootable\n' \
  "${UUID:0:8}" "$PART_START" "$PART_SECTORS" | sfdisk -q "$TMP/disk.raw"
dd if="$TMP/root.img" of="$TMP/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$TMP/root.img"
# grub-bios-setup's layout: boot.img's code (not the partition table) in the
# MBR; core.img from sector 1, where boot.img's default kernel sector (1)
# and diskboot.img's default blocklist (from sector 2) already point.
dd if="$TMP/boot.img" of="$TMP/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$TMP/core.img" of="$TMP/disk.raw" bs=512 seek=1 conv=notrunc status=none

log "qcow2 (zlib compressed)"
qemu-img convert -c -f raw -O qcow2 "$TMP/disk.raw" "$TMP/disk.qcow2"
rm -f "$TMP/disk.raw" "$TMP/boot.img" "$TMP/core.img" "$TMP/customize.sh"
ssh-keygen -q -t ed25519 -N '' -C vmscan-debian-fixture -f "$TMP/id_ed25519"
{
  echo "debian 12 cloud fixture, built $(date -u +%FT%TZ) by scripts/build-debian-image.sh"
  echo "mirrors: $MIRROR $SECURITY_MIRROR"
  echo "kernel: $KVER"
  echo "root uuid: $UUID"
  echo "hardened: ${HARDENED:-no (PermitRootLogin prohibit-password)}"
  echo "packages: $(wc -l <"$TMP/packages.txt")"
  echo "disk: ${DISK_MB} MiB virtual, qcow2 $(stat -c %s "$TMP/disk.qcow2") bytes"
  echo "build seconds: $((SECONDS - T0))"
} >"$TMP/build-info.txt"
echo "$STAMP_WANT" >"$TMP/.stamp"

# Atomic publish: the old copy (if any) goes aside, the new one is renamed in.
rm -rf --one-file-system "$OUT.old"
[ -e "$OUT" ] && mv -T "$OUT" "$OUT.old"
mv -T "$TMP" "$OUT"
rm -rf --one-file-system "$OUT.old"
trap - EXIT
log "done: $OUT/disk.qcow2 ($(du -h "$OUT/disk.qcow2" | cut -f1))"
