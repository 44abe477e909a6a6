#!/usr/bin/env bash
# Builds the shipped plugins and the test plugins (hostile; old-world, of
# the 0.1.0 plugin world) to WebAssembly
# components in target/wasm32-wasip2/release/. Idempotent; adds the
# wasm32-wasip2 target if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --locked --release --target wasm32-wasip2 \
    -p tenant-guard -p tiered-limits -p invalidate-rules -p hostile -p old-world
ls -l "${CARGO_TARGET_DIR:-target}"/wasm32-wasip2/release/*.wasm
