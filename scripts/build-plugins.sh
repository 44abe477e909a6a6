#!/usr/bin/env bash
# Builds the shipped plugins and the test plugins (hostile; wasi-probe;
# old-world, once
# per older plugin world: old_world_0_1.wasm, old_world_0_2.wasm and
# old_world_0_3.wasm) to WebAssembly components in
# target/wasm32-wasip2/release/. Idempotent; adds the wasm32-wasip2 target
# if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
out="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release"
cargo build --locked --release --target wasm32-wasip2 \
    -p tenant-guard -p tiered-limits -p invalidate-rules -p hostile -p old-world -p wasi-probe
cp "$out/old_world.wasm" "$out/old_world_0_1.wasm"
cargo build --locked --release --target wasm32-wasip2 -p old-world --features world-0-2
cp "$out/old_world.wasm" "$out/old_world_0_2.wasm"
cargo build --locked --release --target wasm32-wasip2 -p old-world --features world-0-3
cp "$out/old_world.wasm" "$out/old_world_0_3.wasm"
ls -l "${CARGO_TARGET_DIR:-target}"/wasm32-wasip2/release/*.wasm
