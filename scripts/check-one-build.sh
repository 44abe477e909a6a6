#!/usr/bin/env bash
# Fails when building the sidecar alone would compile a dependency with
# other features than the test build does.
#
# Cargo resolves features for the packages a command selects: when the
# test build (`cargo test --workspace`) enables a feature of a shared
# crate that `cargo build -p outrigger` does not, every crate above it
# (tokio, hyper, tonic, wasmtime, the sidecar) is compiled twice, once by
# `scripts/test.sh` and again by every script and README command that
# builds the sidecar. The cure is to ask for that feature in
# sidecar/Cargo.toml too; this check names the crates that need it.
set -euo pipefail
cd "$(dirname "$0")/.."

features() { # features <cargo tree selection...>: "crate version [features]" lines
  cargo tree --locked "$@" -f '{p} [{f}]' --prefix none | sed 's/ (\*)$//; s/ (proc-macro)$//' | sort -u
}
everything=$(features --workspace)
status=0
for selection in "-p outrigger" "-p outrigger -p outrigger-tests"; do
  # shellcheck disable=SC2086 # the selection is several words on purpose
  extra=$(comm -13 <(echo "$everything") <(features $selection -e normal,build))
  if [ -n "$extra" ]; then
    echo "cargo build $selection compiles these with other features than cargo test --workspace:" >&2
    echo "$extra" | sed 's/^/  /' >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "one build: cargo build -p outrigger reuses the test build's dependencies"
exit $status
