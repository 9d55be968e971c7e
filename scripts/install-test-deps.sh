#!/usr/bin/env bash
# Installs what the test suite needs and is missing. Idempotent: every part
# first checks whether its tool is already there, so a warm machine costs ~1s.
# Needed because CI and fresh developer machines start with nothing installed
# by hand; only the package registries are reachable.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { echo "[install-test-deps] $*" >&2; }

# `apt-get update` is slow, so run it at most once and only when installing.
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

# Runs "$@" and reports how long it took under the label $1.
timed() {
    local label=$1 start=$SECONDS
    shift
    "$@"
    log "$label: done in $((SECONDS - start))s"
}

# --- PostgreSQL server (initdb/pg_ctl/postgres). Debian keeps them out of
# PATH in /usr/lib/postgresql/N/bin, so look there as well.
have_pg_server() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
deps_postgres() {
    if have_pg_server; then log "postgresql server: already installed"; return; fi
    log "postgresql server: installing"
    apt_install postgresql
}

# --- Chromium + ChromeDriver for the browser test.
deps_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        log "chromium: already installed"; return
    fi
    log "chromium: installing"
    apt_install chromium chromium-driver
}

# --- qemu-system-x86. The machine's qemu-utils 10 comes from
# bookworm-backports, and bookworm's own qemu-system-x86 7.2 conflicts with
# it, so take qemu-system-x86 from backports too. A private apt state dir
# keeps the system's sources and lists untouched.
deps_qemu() {
    if [ -x /usr/bin/qemu-system-x86_64 ] && [ -x /usr/bin/qemu-img ]; then log "qemu-system-x86: already installed"; return; fi
    log "qemu-system-x86: installing from bookworm-backports"
    local A=/tmp/vmscan-apt URI="" src=/etc/apt/sources.list.d/debian.sources
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
    if [ -r "$src" ]; then
        URI=$(awk '/^URIs:/{print $2; exit}' "$src")
    elif [ -r /etc/apt/sources.list ]; then
        URI=$(awk '$1=="deb" && $0 ~ /bookworm/ {for(i=2;i<=NF;i++) if($i ~ /^https?:/){print $i; exit}}' /etc/apt/sources.list)
    fi
    if [ -z "$URI" ]; then
        URI=http://deb.debian.org/debian
        log "qemu-system-x86: no Debian mirror found in $src or /etc/apt/sources.list; falling back to $URI"
    fi
    printf 'deb %s bookworm-backports main\ndeb %s bookworm main\n' "$URI" "$URI" >"$A/bpo.list"
    local O=(-o "Dir::Etc::SourceList=$A/bpo.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache")
    if ! { $SUDO apt-get "${O[@]}" update -qq &&
           $SUDO apt-get "${O[@]}" install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils; }; then
        log "ERROR: could not install qemu-system-x86 from $URI bookworm-backports"
        return 1
    fi
}

# --- aiosmtpd: a local SMTP sink used by the mail tests.
deps_aiosmtpd() {
    if python3 -c 'import aiosmtpd' 2>/dev/null; then log "aiosmtpd: already installed"; return; fi
    log "aiosmtpd: installing with pip"
    # A Debian system python refuses plain pip installs (PEP 668).
    python3 -m pip install -q --disable-pip-version-check aiosmtpd 2>/dev/null ||
        python3 -m pip install -q --disable-pip-version-check --break-system-packages aiosmtpd
}

# --- jsonschema and junitparser: independent checkers of the scan report
# (tests/fixtures/check_report.py validates its JSON against
# static/scan-report.schema.json and parses its JUnit XML as CI tools do).
deps_report_checkers() {
    if python3 -c 'import jsonschema, junitparser' 2>/dev/null; then log "jsonschema, junitparser: already installed"; return; fi
    log "jsonschema, junitparser: installing with pip"
    python3 -m pip install -q --disable-pip-version-check jsonschema junitparser 2>/dev/null ||
        python3 -m pip install -q --disable-pip-version-check --break-system-packages jsonschema junitparser
}

# --- OpenSSH server (sshd + sftp-server) for tests/ssh_remote.rs, which runs
# its own sshd on 127.0.0.1 with a temp config. The package's postinst would
# start a system sshd on port 22; a temporary policy-rc.d (exit 101) stops
# that when the machine has none, so CI never gains a listening daemon.
deps_sshd() {
    if [ -x /usr/sbin/sshd ] && [ -x /usr/lib/openssh/sftp-server ]; then
        log "openssh-server: already installed"; return
    fi
    log "openssh-server: installing (service start suppressed)"
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    apt_install openssh-server openssh-sftp-server || rc=$?
    [ "$made_policy" -eq 0 ] || $SUDO rm -f "$policy"
    return "$rc"
}

# --- Dropbear (the SSH server of the fixture VM) for tests/ssh_remote.rs.
# dropbear-bin ships no init script, so nothing starts on install.
deps_dropbear() {
    if [ -x /usr/sbin/dropbear ] && [ -x /usr/bin/dropbearkey ]; then
        log "dropbear-bin: already installed"; return
    fi
    log "dropbear-bin: installing"
    apt_install dropbear-bin
}

# --- OpenLDAP server and client tools for tests/ldap.rs, which runs its own
# slapd on 127.0.0.1 from a temp dir. As for sshd, a temporary policy-rc.d
# (exit 101) keeps the package from starting a system slapd, and debconf is
# told not to build a database of its own (the tests never use it).
deps_slapd() {
    if [ -x /usr/sbin/slapd ] && command -v ldapadd >/dev/null 2>&1 &&
       command -v ldapsearch >/dev/null 2>&1; then
        log "slapd: already installed"; return
    fi
    log "slapd: installing (service start suppressed)"
    echo "slapd slapd/no_configuration boolean true" | $SUDO debconf-set-selections
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    apt_install slapd ldap-utils || rc=$?
    [ "$made_policy" -eq 0 ] || $SUDO rm -f "$policy"
    return "$rc"
}

# --- Go and govmomi's vSphere simulator library (Debian bookworm: Go 1.19,
# govmomi 0.24.2) for vcsim, which tests/vsphere.rs starts per test; the
# binary itself is built below (scripts/build-vcsim.sh, cached).
deps_go_govmomi() {
    if command -v go >/dev/null 2>&1 &&
       [ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]; then
        log "golang-go + govmomi: already installed"; return
    fi
    log "golang-go + govmomi: installing"
    apt_install golang-go golang-github-vmware-govmomi-dev
}

# `--runtime`: only what the daemon itself needs (scripts/run.sh).
if [ "${1:-}" = "--runtime" ]; then
    timed "qemu-system-x86" deps_qemu
    exit 0
fi

timed "postgresql" deps_postgres
timed "chromium" deps_chromium
timed "qemu-system-x86" deps_qemu
timed "aiosmtpd" deps_aiosmtpd
timed "jsonschema, junitparser" deps_report_checkers
timed "openssh-server" deps_sshd
timed "dropbear-bin" deps_dropbear
timed "slapd" deps_slapd
timed "golang-go + govmomi" deps_go_govmomi

# --- the VM image fixtures: each built once per version of its build script
# (which embeds everything that shapes the image) into a cache outside the
# clone (a fresh clone on a warm machine reuses it), then linked as
# target/NAME where the tests look. The scripts check their own stamp, so a
# warm call costs a stat.
cached_image() { # NAME BUILD_SCRIPT [RUNNER]
    local name=$1 script=$2 runner=${3:-} repo cache hash out link
    repo=$(cd "$(dirname "$0")/.." && pwd)
    cache=${VMSCAN_CACHE_DIR:-/var/cache/vmscan}
    hash=$(sha256sum "$repo/$script" | cut -c1-16)
    out=$cache/$name-$hash
    $runner mkdir -p "$cache"
    mkdir -p "$repo/target"
    $runner "$repo/$script" "$out"
    link=$repo/target/$name
    if [ -d "$link" ] && [ ! -L "$link" ]; then rm -rf "$link"; fi
    ln -sfn "$out" "$link"
    log "$name: $link -> $out"
}

# The busybox + dropbear test VM (seconds to build and to boot).
deps_test_image() { cached_image test-image scripts/build-test-image.sh; }
timed "test image" deps_test_image

# --- the Debian 12 cloud image (a real systemd/OpenSSH/cloud-init guest,
# scripts/build-debian-image.sh, which needs root). A cold build takes 4-15
# min and ~300 MB from the Debian mirror this machine's apt uses; it runs in
# a temp dir renamed into place, so an interrupted build is simply redone.
# VMSCAN_SKIP_DEBIAN_IMAGE=1 skips it (the tests that boot it then fail
# with the command to run).
deps_debian_image() {
    if [ -n "${VMSCAN_SKIP_DEBIAN_IMAGE:-}" ]; then log "debian image: skipped (VMSCAN_SKIP_DEBIAN_IMAGE)"; return; fi
    cached_image debian-image scripts/build-debian-image.sh "$SUDO"
}
timed "debian image" deps_debian_image

# --- the test Flexera agent as a real managesoft_<ver>_amd64.deb
# (scripts/build-test-agent.sh from tests/fixtures/managesoft/). It is part
# of the repository and builds in a second, so it goes straight into
# target/test-agent; its stamp skips the build when nothing changed.
deps_test_agent() {
    local repo
    repo=$(cd "$(dirname "$0")/.." && pwd)
    "$repo/scripts/build-test-agent.sh" "$repo/target/test-agent"
}
timed "test agent" deps_test_agent

# --- vcsim (VMware's vSphere API simulator) from the packages above, built
# once per version of its script and main.go into the cache, linked as
# target/vcsim (tests/support/vcsim.rs looks there).
deps_vcsim() {
    local repo
    repo=$(cd "$(dirname "$0")/.." && pwd)
    "$repo/scripts/build-vcsim.sh"
}
timed "vcsim" deps_vcsim
