#!/usr/bin/env bash
# Checks that the release `sotto` (and with --server, `sotto-server`) of a
# commit is reproducible: it builds it twice from a fresh clone, each time
# in the same fixed directory (/tmp/sotto-reproducible: paths are part of
# what a build embeds, so every builder uses this one), with
# SOURCE_DATE_EPOCH set to the commit's time, the cargo home remapped to
# /cargo (in Rust and C code), and the Cargo.lock and toolchain of the
# commit; then compares the bytes. Prints each binary's SHA-256: a member
# compares it with the one published for the release (docs/OPERATING.md,
# "Checking a binary").
#
#   scripts/reproducible-build.sh [--server] [COMMIT]   (default HEAD)
set -euo pipefail

bins=(-p sotto-cli)
names=(sotto)
if [ "${1:-}" = "--server" ]; then
  bins+=(-p sotto-server)
  names+=(sotto-server)
  shift
fi
repo=$(git rev-parse --show-toplevel)
sha=$(git -C "$repo" rev-parse "${1:-HEAD}^{commit}")
epoch=$(git -C "$repo" show -s --format=%ct "$sha")
cargo_home=${CARGO_HOME:-$HOME/.cargo}
root=/tmp/sotto-reproducible
out=$(mktemp -d)
trap 'rm -rf "$root" "$out"' EXIT

build() {
  rm -rf "$root"
  mkdir -p "$root"
  git clone -q --no-local "$repo" "$root/src"
  git -C "$root/src" checkout -q "$sha"
  (
    cd "$root/src"
    export SOURCE_DATE_EPOCH=$epoch SOTTO_COMMIT=$sha CARGO_TARGET_DIR=$root/target
    export RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$root/src=/sotto"
    export CFLAGS="-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$root=/build"
    cargo build --release --locked "${bins[@]}" >&2
  )
  mkdir -p "$out/$1"
  for n in "${names[@]}"; do
    cp "$root/target/release/$n" "$out/$1/$n"
  done
}

echo "building $sha twice in $root" >&2
build first
build second
status=0
for n in "${names[@]}"; do
  a=$(sha256sum "$out/first/$n" | cut -d' ' -f1)
  b=$(sha256sum "$out/second/$n" | cut -d' ' -f1)
  if [ "$a" = "$b" ]; then
    echo "$n $sha sha256 $a: reproducible"
  else
    echo "$n $sha: NOT reproducible ($a, then $b)" >&2
    status=1
  fi
done
exit $status
