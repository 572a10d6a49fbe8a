#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS,
# default 25 s each) on the stable toolchain: no sanitizer (`-s none`), and
# RUSTC_BOOTSTRAP=1 for the -Z flags cargo-fuzz passes. Installs cargo-fuzz
# if missing. A crash fails the run; libFuzzer leaves the input under
# fuzz/artifacts/TARGET/ (turn it into a regression test, see
# docs/THREAT_MODEL.md). Prints each target's run count.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-25}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
flags=(-s none --target-dir "$target_dir")

cargo fuzz build "${flags[@]}"
for t in $(cargo fuzz list); do
  corpus="$(mktemp -d)"
  log="$(mktemp)"
  # The harnesses keep a server and profiles for the whole run (the store
  # syncs every write: a RAM disk when there is one) and never delete them.
  work="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  if ! TMPDIR="$work" cargo fuzz run "${flags[@]}" "$t" "$corpus" "${seeds[@]}" -- \
      -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 60 "$log"
    rm -rf "$work"
    echo "fuzz target $t failed: see fuzz/artifacts/$t/"
    exit 1
  fi
  runs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')"
  cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 || true)"
  echo "fuzz $t: $runs inputs in ${seconds}s, $cov, no crash"
  rm -rf "$corpus" "$log" "$work"
done
