#!/usr/bin/env bash
# Builds the shipped plugins and the hostile test plugin to WebAssembly
# components in target/wasm32-wasip2/release/. Idempotent; adds the
# wasm32-wasip2 target if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --locked --release --target wasm32-wasip2 \
    -p tenant-guard -p tiered-limits -p invalidate-rules -p hostile
ls -l "${CARGO_TARGET_DIR:-target}"/wasm32-wasip2/release/*.wasm
