#!/usr/bin/env bash
# Builds the shipped plugins and the test plugins (hostile; wasi-probe;
# slow-start; old-world, once per older plugin world: old_world_0_1.wasm,
# old_world_0_2.wasm, old_world_0_3.wasm and old_world_0_4.wasm) to
# WebAssembly components in
# target/wasm32-wasip2/release/. Idempotent; adds the wasm32-wasip2 target
# if it is missing.
#
#   scripts/build-plugins.sh --languages   the plugins written in TypeScript
#     and Python instead (tenant_guard_js.wasm, tenant_guard_py.wasm, and the
#     test plugins hostile_js.wasm, hostile_py.wasm), with
#     the toolchains `scripts/install-test-deps.sh --tools` installs; each
#     built again only when its sources changed
#   scripts/build-plugins.sh --compile     those compiled into the tests'
#     compile cache (target/plugin-cache), once the tests are built
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--compile" ]; then
  # The TypeScript and Python plugins, compiled by the tests' sidecar
  # binary into the tests' compile cache (target/plugin-cache), which the
  # tests then load them from: compiling each takes tens of seconds in a
  # debug build, better spent once here than inside the test run.
  target="${CARGO_TARGET_DIR:-target}"
  mkdir -p "$target/plugin-cache"
  for wasm in "$target"/wasm32-wasip2/release/*_js.wasm "$target"/wasm32-wasip2/release/*_py.wasm; do
    "$target/debug/outrigger-under-test" plugin check --cache-dir "$target/plugin-cache" "$wasm" >/dev/null &
  done
  rc=0
  for job in $(jobs -p); do wait "$job" || rc=1; done
  exit $rc
fi

if [ "${1:-}" = "--languages" ]; then
  out="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release"
  mkdir -p "$out"
  # build OUT SOURCES... -- COMMAND...: runs COMMAND unless OUT is newer
  # than every source.
  build() {
    local wasm=$1 newer=1
    shift
    local sources=()
    while [ "$1" != "--" ]; do sources+=("$1"); shift; done
    shift
    if [ -f "$wasm" ]; then
      newer=0
      for f in $(find "${sources[@]}" -type f -not -path '*/node_modules/*' -not -name '*.pyc'); do
        [ "$f" -nt "$wasm" ] && newer=1
      done
    fi
    if [ "$newer" = 1 ]; then "$@"; else echo "$wasm: up to date"; fi
  }
  # The TypeScript is type-checked against the SDK's types first.
  build "$out/tenant_guard_js.wasm" plugins/tenant-guard/js sdk/plugin-js/index.js sdk/plugin-js/index.d.ts \
    sdk/plugin-js/build.mjs sdk/wit -- \
    sh -c "sdk/plugin-js/node_modules/.bin/tsc -p sdk/plugin-js/tsconfig.json && node sdk/plugin-js/build.mjs \
      build plugins/tenant-guard/js/tenant-guard.ts -o $out/tenant_guard_js.wasm" &
  build "$out/tenant_guard_py.wasm" plugins/tenant-guard/python sdk/plugin-python/src sdk/wit -- \
    env PYTHONPATH=sdk/plugin-python/src .tools/venv-plugin-python/bin/python -m outrigger_plugin build plugins/tenant-guard/python/tenant_guard.py \
      -o "$out/tenant_guard_py.wasm" &
  build "$out/hostile_js.wasm" tests/plugins/hostile/js sdk/plugin-js/index.js sdk/plugin-js/index.d.ts \
    sdk/plugin-js/build.mjs sdk/wit -- \
    node sdk/plugin-js/build.mjs build tests/plugins/hostile/js/hostile.ts -o "$out/hostile_js.wasm" &
  build "$out/hostile_py.wasm" tests/plugins/hostile/python sdk/plugin-python/src sdk/wit -- \
    env PYTHONPATH=sdk/plugin-python/src .tools/venv-plugin-python/bin/python -m outrigger_plugin build \
      tests/plugins/hostile/python/hostile.py -o "$out/hostile_py.wasm" &
  rc=0
  for job in $(jobs -p); do wait "$job" || rc=1; done
  exit $rc
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
out="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release"
cargo build --locked --release --target wasm32-wasip2 \
    -p tenant-guard -p tiered-limits -p invalidate-rules -p envelope -p audit-log \
    -p hostile -p old-world -p wasi-probe -p slow-start
cp "$out/old_world.wasm" "$out/old_world_0_1.wasm"
cargo build --locked --release --target wasm32-wasip2 -p old-world --features world-0-2
cp "$out/old_world.wasm" "$out/old_world_0_2.wasm"
cargo build --locked --release --target wasm32-wasip2 -p old-world --features world-0-3
cp "$out/old_world.wasm" "$out/old_world_0_3.wasm"
cargo build --locked --release --target wasm32-wasip2 -p old-world --features world-0-4
cp "$out/old_world.wasm" "$out/old_world_0_4.wasm"
ls -l "${CARGO_TARGET_DIR:-target}"/wasm32-wasip2/release/*.wasm
