#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the supply chain
# (cargo-deny), every test of the workspace against real servers on
# loopback, then each fuzz target for a bounded time (scripts/fuzz.sh).
# Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools for the vendored SQLCipher/OpenSSL (normally already present).
missing=()
for tool in cc make perl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing build tools: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq build-essential perl >/dev/null
fi
# The chat app's end-to-end test runs it in tmux; the daemon's runs the
# Python example bot; the disappearing-message tests run the binaries on a
# moved clock (libfaketime, from the package faketime).
for tool in tmux python3 faketime; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "installing $tool"
    apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
  fi
done

# PostgreSQL and NATS for the cluster tests: started (or installed) here.
./scripts/services.sh

cargo fmt --all -- --check
rustfmt --edition 2024 --check fuzz/fuzz_targets/*.rs # fuzz/ is its own workspace
cargo clippy --workspace --all-targets --locked -- -D warnings

# Supply chain: licenses, bans and sources against deny.toml (advisories
# need a database this network cannot fetch).
if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny"
  cargo install --locked cargo-deny
fi
cargo deny --locked check licenses bans sources

# The end-to-end tests run the workspace's binaries: build them first.
cargo build --workspace --bins --locked

# The benchmarks must not rot: every scenario once, small (`--quick`, about
# 30 s), against the real servers and comparators. Checks that each
# completes and writes its rows, never the figures. Needs mosquitto and
# nats-server (scripts/services.sh installs them).
bench=$(realpath "${CARGO_TARGET_DIR:-target}")/debug/sotto-bench
bench_dir=$(mktemp -d)
(cd "$bench_dir" && "$bench" all --quick --out quick.json >/dev/null)
python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["tables"]; assert t and all(x["rows"] for x in t), t' "$bench_dir/quick.json"
rm -rf "$bench_dir"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# Fuzzing: every target for a bounded time (FUZZ_SECONDS each).
./scripts/fuzz.sh
