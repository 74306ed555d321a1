#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (or those named in FUZZ_TARGETS) for SECONDS each (default
# 20), FUZZ_JOBS at a time (default 2), starting from its seed corpus fuzz/corpus/TARGET/.
# New inputs go to a scratch directory, so the committed seeds stay as they are. Fails on any
# crash, panic, failed invariant or timeout, printing the input (saved in
# fuzz/artifacts/TARGET/) and how to replay it.
#
# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer, coverage options); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1. Targets are built without a sanitizer: the
# code fuzzed is safe Rust, so panics and failed assertions are what there is to catch, and
# every second goes to executions.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
jobs="${FUZZ_JOBS:-2}"
export RUSTC_BOOTSTRAP=1
FUZZ_FLAGS=(--sanitizer none)

if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "== fuzz: cargo fmt --check"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== fuzz: build"
cargo fuzz build "${FUZZ_FLAGS[@]}"

bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

run_target() {
  local t="$1"
  mkdir -p "$scratch/corpus/$t" "fuzz/artifacts/$t"
  local rc=0
  "$bin_dir/$t" "$scratch/corpus/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$scratch/$t.rc"
}

targets=()
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  while IFS= read -r t; do targets+=("$t"); done < <(cargo fuzz list)
fi
echo "== fuzz: ${#targets[@]} targets, ${secs} s each, ${jobs} at a time"
started=$SECONDS
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_target "$t" &
done
wait

failed=()
for t in "${targets[@]}"; do
  rc="$(cat "$scratch/$t.rc")"
  log="$scratch/$t.log"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  added="$(sed -n 's/^stat::new_units_added: *//p' "$log")"
  seeds="$(find "fuzz/corpus/$t" -type f | wc -l)"
  if [ "$rc" -eq 0 ]; then
    printf '%-18s ok   %10s runs  %7s exec/s  %3s seeds  %5s new inputs\n' \
      "$t" "${runs:-?}" "${rate:-?}" "$seeds" "${added:-?}"
  else
    printf '%-18s FAILED (exit %s)\n' "$t" "$rc"
    failed+=("$t")
    echo "---- $t: the failure"
    grep -A 4 -m 1 'panicked at' "$log" || true
    echo "---- $t: last lines of its log"
    grep -v -e '^#' -e '^INFO' -e 'Uses:' -e '^ *[0-9]*: ' -e '^ *at ' "$log" | tail -n 15
    echo "---- replay: $bin_dir/$t fuzz/artifacts/$t/<input>"
  fi
done
echo "== fuzz: $((SECONDS - started)) s for the runs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: all ${#targets[@]} targets passed"
