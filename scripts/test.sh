#!/usr/bin/env bash
# Runs every test of p2pnc: formatting and lints (for Linux, and for Windows, macOS and Android
# through scripts/cross-clippy.sh), the Rust suite (unit, loopback, CLI and the NAT lab), the
# API docs' links, the Debian package (scripts/deb.sh), a bounded run of every fuzz target, and the Java client's suite. Installs what is
# missing on Debian when run as root. The NAT lab needs root; without it the lab tests say
# they were skipped (and fail under CI).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nftables iptables iproute2 conntrack socat miniupnpd stun-server tcpdump iperf3
  default-jdk-headless maven junit4 libsurefire-java libmaven-compiler-plugin-java
  libmaven-resources-plugin-java libmaven-jar-plugin-java libmaven-install-plugin-java
  libmaven-clean-plugin-java chromium man-db systemd)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages (run as root to install them): ${missing[*]}" >&2
    exit 1
  fi
fi
if [ -n "${CI:-}" ] && [ "$(id -u)" -ne 0 ]; then
  echo "CI must run the NAT lab, which needs root" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo clippy for Windows, macOS and Android (compile-time guard; nothing runs)"
scripts/cross-clippy.sh
echo "== cargo test (unit, loopback, CLI, NAT lab)"
cargo test --workspace --locked -- --test-threads=4
echo "== cargo doc (intra-doc links resolve)"
RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links" cargo doc --workspace --no-deps --locked
echo "== Debian package (built, unpacked, binary, man pages and systemd units checked)"
scripts/deb.sh
echo "== fuzzing (every target of fuzz/, ${FUZZ_SECONDS:-20} s each)"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
echo "== Java client"
java/run-tests.sh
echo "== all tests passed"
