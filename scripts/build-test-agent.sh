#!/usr/bin/env bash
# build-test-agent.sh OUT_DIR
#
# Builds vmscan's stand-in for the FlexNet inventory agent as a real Debian
# package, named as Flexera names theirs (managesoft_<ver>_amd64.deb,
# ../shared/reference/flexera.md §1a "Packages"), from the files in
# tests/fixtures/managesoft/ (programs, systemd units, maintainer scripts;
# each behaviour there cites flexera.md). With RPM=1 it also builds the RPM
# (managesoft-<ver>-1.x86_64.rpm, Flexera's name, flexera.md §1a) with
# rpmbuild (Debian package `rpm`); no fixture image is RPM-based yet.
#
# Outputs in OUT_DIR: managesoft_<ver>_amd64.deb [, managesoft-<ver>-1.x86_64.rpm],
#   .stamp (hash of this script and the package files). A warm call (stamp
#   unchanged) does nothing; the build runs in a temp dir and renames its
#   results into place, so a failed build leaves no package behind.
# Tunables (env): AGENT_VERSION=24.0.0 (the real agent's numbering is not
#   copied: this is a test build)  FORCE=1  RPM=1
# Needs only dpkg-deb (any user; file owners are set to root in the package).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/tests/fixtures/managesoft
OUT=$(realpath -m "$1")
VERSION=${AGENT_VERSION:-24.0.0}
DEB=managesoft_${VERSION}_amd64.deb
RPMF=managesoft-${VERSION}-1.x86_64.rpm

STAMP_WANT=$( { cat "$0"; (cd "$SRC" && find . -type f | LC_ALL=C sort | xargs sha256sum);
  echo "VERSION=$VERSION RPM=${RPM:-}"; } | sha256sum | cut -d' ' -f1)
mkdir -p "$OUT"
if [ -z "${FORCE:-}" ] && [ -s "$OUT/$DEB" ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$STAMP_WANT" ]; then
  echo "test agent up to date in $OUT" >&2
  exit 0
fi
exec 9>"$OUT/.lock"
flock 9

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------------------ file tree
# Layout as the real agent's (flexera.md §1a "Install layout" [V]); the
# systemd units go where Debian packages put theirs.
P=$TMP/pkg
install -d "$P/opt/managesoft/bin" "$P/opt/managesoft/lib" "$P/lib/systemd/system" "$P/DEBIAN"
install -m 0755 "$SRC"/bin/* "$P/opt/managesoft/bin/"
install -m 0644 "$SRC/lib/mgs-common.sh" "$P/opt/managesoft/lib/"
install -m 0644 "$SRC"/systemd/*.service "$P/lib/systemd/system/"
echo "$VERSION" >"$P/opt/managesoft/VERSION"
chmod 0644 "$P/opt/managesoft/VERSION"
for s in postinst prerm postrm; do install -m 0755 "$SRC/DEBIAN/$s" "$P/DEBIAN/$s"; done
size=$(du -sk --exclude=DEBIAN "$P" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$size/" "$SRC/DEBIAN/control" >"$P/DEBIAN/control"
(cd "$P" && find opt lib -type f | LC_ALL=C sort | xargs md5sum) >"$P/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz --build "$P" "$TMP/$DEB" >/dev/null
dpkg-deb --info "$TMP/$DEB" >/dev/null

# ------------------------------------------------------------ rpm (optional)
if [ -n "${RPM:-}" ]; then
  command -v rpmbuild >/dev/null 2>&1 || { echo "$0: RPM=1 needs rpmbuild (apt-get install rpm)" >&2; exit 1; }
  R=$TMP/rpm
  mkdir -p "$R"/{BUILD,RPMS,SOURCES,SPECS,SRPMS}
  # The same tree and maintainer scripts; rpm calls %post with 1 on install,
  # 2 on upgrade, where dpkg's postinst gets "configure".
  {
    echo "Name: managesoft"
    echo "Version: $VERSION"
    echo "Release: 1"
    echo "Summary: FlexNet Inventory Agent (vmscan test build)"
    echo "License: Proprietary-test"
    echo "BuildArch: x86_64"
    echo "Requires: curl"
    echo "AutoReqProv: no"
    echo "%description"
    echo "A stand-in for Flexera's FlexNet inventory agent package, for vmscan's tests."
    echo "%install"
    echo "cp -a $P/opt %{buildroot}/"
    echo "mkdir -p %{buildroot}/usr/lib/systemd/system"
    echo "cp -a $P/lib/systemd/system/. %{buildroot}/usr/lib/systemd/system/"
    echo "%post"
    echo "exec sh -s configure <<'POSTINST'"
    cat "$SRC/DEBIAN/postinst"
    echo "POSTINST"
    echo "%preun"
    echo "[ \"\$1\" -eq 0 ] || exit 0"
    cat "$SRC/DEBIAN/prerm"
    echo "%postun"
    echo "[ \"\$1\" -eq 0 ] && set -- purge"
    cat "$SRC/DEBIAN/postrm"
    echo "%files"
    echo "/opt/managesoft"
    echo "/usr/lib/systemd/system/ndtask.service"
    echo "/usr/lib/systemd/system/mgsusageag.service"
  } >"$R/SPECS/managesoft.spec"
  rpmbuild --quiet --define "_topdir $R" -bb "$R/SPECS/managesoft.spec" >/dev/null
  cp "$R/RPMS/x86_64/$RPMF" "$TMP/$RPMF"
fi

rm -f "$OUT"/managesoft_*_amd64.deb "$OUT"/managesoft-*.rpm
for f in "$TMP"/managesoft*.{deb,rpm}; do [ -e "$f" ] && mv "$f" "$OUT/"; done
echo "$STAMP_WANT" >"$OUT/.stamp"
ls "$OUT"/managesoft* >&2
