#!/usr/bin/env bash
# The Node client's checks: types (tsc --strict), lint (biome), the build,
# its test suite against live sidecars (memory and Redis) from
# target/debug/outrigger (OUTRIGGER_BIN overrides), and the README's tour
# run from the packed package installed into an empty project.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$root/scripts/install-test-deps.sh" --tools >/dev/null
cd "$here"
if [ -z "${OUTRIGGER_BIN:-}" ]; then
  (cd "$root" && cargo build -q -p outrigger)   # reuses the test build's dependencies
  export OUTRIGGER_BIN="$root/target/debug/outrigger"
fi
npx tsc --noEmit -p tsconfig.json
npx biome lint src test bench.mjs check_readme.mjs
npx tsc -p tsconfig.json
node --test test/*.test.mjs
node check_readme.mjs
