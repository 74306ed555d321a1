#!/usr/bin/env bash
# Compile-time guard for the platforms this machine cannot run: `cargo clippy --all-targets`
# with warnings denied, for each target in CROSS_TARGETS (default: Windows x86_64, macOS on
# Apple silicon, Android aarch64). Installs what it needs when run as root on Debian: the
# rustup targets, mingw-w64 (Windows) and clang (Apple, Android, Windows on ARM).
#
# Only Rust is checked: nothing is linked, so no Windows, Apple or Android SDK is needed. The
# one C dependency, ring, builds its C and assembly for every target with:
#   x86_64-pc-windows-gnu        x86_64-w64-mingw32-gcc (Debian's gcc-mingw-w64-x86-64)
#   *-apple-darwin               clang -nostdlibinc -DRING_CORE_NOSTDLIBINC=1, with a stub
#                                TargetConditionals.h (the one SDK header ring includes)
#   aarch64-linux-android        clang -nostdlibinc -DRING_CORE_NOSTDLIBINC=1 (no NDK)
#   aarch64-pc-windows-gnullvm   the same (stands in for aarch64-pc-windows-msvc, whose cfg
#                                p2pnc's code does not tell apart)
# RING_CORE_NOSTDLIBINC makes ring's C use no libc header, so the compiler needs no sysroot.
# Other targets: set CC_<target> and CFLAGS_<target> yourself and name them in CROSS_TARGETS.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(${CROSS_TARGETS:-x86_64-pc-windows-gnu aarch64-apple-darwin aarch64-linux-android})

need_apt=()
for t in "${TARGETS[@]}"; do
  case "$t" in
    *-windows-gnu) command -v x86_64-w64-mingw32-gcc >/dev/null || need_apt+=(gcc-mingw-w64-x86-64) ;;
    *) command -v clang >/dev/null || need_apt+=(clang) ;;
  esac
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages (run as root to install them): ${need_apt[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cat >"$stub/TargetConditionals.h" <<'H'
/* Stand-in for the Apple SDK header that ring includes: macOS, not iOS. */
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
H
freestanding="-nostdlibinc -DRING_CORE_NOSTDLIBINC=1"

for t in "${TARGETS[@]}"; do
  var=${t//-/_}
  case "$t" in
    x86_64-pc-windows-gnu) export "CC_$var=x86_64-w64-mingw32-gcc" ;;
    *-apple-darwin | *-apple-ios) export "CC_$var=clang" "CFLAGS_$var=$freestanding -I$stub" ;;
    *) export "CC_$var=${CC_CROSS:-clang}" "CFLAGS_$var=$freestanding" ;;
  esac
  echo "== cargo clippy --target $t"
  start=$(date +%s)
  cargo clippy --workspace --all-targets --locked --target "$t" -- -D warnings
  echo "   $t: $(( $(date +%s) - start )) s"
done
