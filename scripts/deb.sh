#!/bin/sh
# Builds the Debian package (release binary, man pages, completions, systemd units) and checks
# it without installing it on this host: unpacked into a temporary root, the binary runs, the
# man page renders and systemd accepts the units. Prints the binary's and the package's sizes.
set -eu
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need man || ! need systemd-analyze; then
    apt-get install -y --no-install-recommends man-db systemd >/dev/null
fi
if ! need cargo-deb; then
    cargo install --locked cargo-deb
fi

cargo build --release --locked --bin p2pnc
rm -rf target/assets
target/release/p2pnc generate-assets target/assets
cargo deb --no-build --locked --output target/debian/p2pnc.deb

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x target/debian/p2pnc.deb "$root"
"$root/usr/bin/p2pnc" --version
for page in "$root"/usr/share/man/man1/*.1*; do
    # man -l renders the page; groff's warnings (a broken page) fail the check.
    out=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
    if [ -n "$out" ]; then
        echo "man page $page: $out" >&2
        exit 1
    fi
    MANWIDTH=80 man -l "$page" 2>/dev/null | grep -q "^NAME" || {
        echo "man page $page has no NAME section" >&2
        exit 1
    }
done
test -s "$root/usr/share/bash-completion/completions/p2pnc"
test -s "$root/usr/share/zsh/vendor-completions/_p2pnc"
test -s "$root/usr/share/fish/vendor_completions.d/p2pnc.fish"
# systemd resolves the units' targets and commands inside the root: give it the host's units
# and the one other command they run (/bin/kill). A warning (an unknown key, say) fails too.
mkdir -p "$root/usr/lib/systemd/system" "$root/bin"
cp -rn /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
cp /bin/kill "$root/bin/kill"
out=$(systemd-analyze verify --root="$root" \
    /lib/systemd/system/p2pnc-server.service /lib/systemd/system/p2pnc-expose.service 2>&1)
if [ -n "$out" ]; then
    echo "systemd-analyze verify: $out" >&2
    exit 1
fi
echo "binary: $(stat -c %s target/release/p2pnc) bytes; package: $(stat -c %s target/debian/p2pnc.deb) bytes"
