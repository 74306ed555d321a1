#!/usr/bin/env bash
# Builds the Debian package of p2pnc into target/debian/: the binary in /usr/bin, man pages,
# bash/zsh/fish completions, the systemd units of contrib/ (installed, not enabled) and a
# default /etc/p2pnc/server.toml. Needs cargo-deb (`cargo install cargo-deb --locked`).
#
#   scripts/deb.sh                  release build (LTO, stripped): the package to ship
#   scripts/deb.sh --check          also install it into an empty dpkg root and check that the
#                                   binary runs, the man page renders and the units verify
#   PROFILE=dev scripts/deb.sh ...  package the debug build instead (what the test run checks:
#                                   it is already built, so the check costs seconds)
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
[ "${1:-}" = "--check" ] && check=true
profile="${PROFILE:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "PROFILE must be release or dev, not $profile" >&2; exit 1 ;;
esac

# Pinned: newer versions may refuse to package the dev build the test run checks.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "== installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

cargo build --locked --profile "$profile" --bin p2pnc
bin="target/$dir/p2pnc"

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/units"
"$bin" man --dir "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/p2pnc.bash"
"$bin" completions zsh >"$assets/completions/_p2pnc"
"$bin" completions fish >"$assets/completions/p2pnc.fish"
# contrib/ names /usr/local/bin (where a hand-installed binary goes); the package's is /usr/bin.
for unit in contrib/*.service; do
  sed 's|/usr/local/bin/p2pnc|/usr/bin/p2pnc|g' "$unit" >"$assets/units/$(basename "$unit")"
done

cargo deb --no-build --profile "$profile" --output target/debian/ 2> >(grep -v -e "dev profile is not supported" -e "debug symbols set" >&2) >/dev/null
deb=$(ls -t target/debian/p2pnc_*.deb | head -1)
echo "== built $deb ($(du -h "$deb" | cut -f1); binary $(du -h "$bin" | cut -f1) before packaging)"
$check || exit 0

# Install into an empty root with dpkg itself (its own database, no maintainer scripts run on
# this host), then use what it installed.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status"
# --force-depends: libc6 is this host's, not the empty root's.
dpkg --root="$root" --force-depends --force-script-chrootless -i "$deb" >"$root.log" 2>&1 ||
  { cat "$root.log" >&2; exit 1; }
rm -f "$root.log"
dpkg --root="$root" -L p2pnc >"$root.files"
for f in /usr/bin/p2pnc /usr/share/man/man1/p2pnc.1.gz /usr/share/man/man1/p2pnc-expose.1.gz \
  /usr/share/bash-completion/completions/p2pnc /usr/lib/systemd/system/p2pnc-server.service \
  /usr/lib/systemd/system/p2pnc-expose.service /etc/p2pnc/server.toml; do
  grep -qx "$f" "$root.files" || { echo "the package does not install $f" >&2; exit 1; }
done
rm -f "$root.files"
# Then look at the installed system: in a mount namespace of its own, the package's /usr and
# /etc lie over this host's (overlayfs), so `p2pnc`, `man p2pnc` and the units are found where
# the package put them, and nothing on this host changes.
want="p2pnc $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
unshare --mount sh -euc '
  root=$1 want=$2
  mount --make-rprivate /
  mount -t overlay overlay -o "lowerdir=$root/usr:/usr" /usr
  mount -t overlay overlay -o "lowerdir=$root/etc:/etc" /etc
  version=$(p2pnc --version)
  [ "$version" = "$want" ] || { echo "the installed binary says: $version" >&2; exit 1; }
  MANWIDTH=100 MANPAGER=cat man p2pnc 2>/dev/null | grep -q "p2pnc-expose" ||
    { echo "man p2pnc does not show the command list" >&2; exit 1; }
  MANPAGER=cat man p2pnc-connect 2>/dev/null | grep -q -- "--listen" ||
    { echo "man p2pnc-connect does not show its flags" >&2; exit 1; }
  bash -n /usr/share/bash-completion/completions/p2pnc
  p2pnc server --config /etc/p2pnc/server.toml --help >/dev/null
  systemd-analyze verify /usr/lib/systemd/system/p2pnc-server.service \
    /usr/lib/systemd/system/p2pnc-expose.service
  echo "== the package installs: $version, man p2pnc, completions, units verified"
' sh "$root" "$want"
