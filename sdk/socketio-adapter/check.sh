#!/usr/bin/env bash
# The Socket.IO adapter's checks: types (tsc --strict), lint (biome), the
# build, its tests (three Socket.IO servers, each with its own sidecar from
# target/debug/outrigger or OUTRIGGER_BIN, on one real Redis; then the same
# servers sharing one sidecar on the memory backend), and the
# README's setup run from the packed packages installed into an empty
# project.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$root/scripts/install-test-deps.sh" --tools >/dev/null
cd "$here"
if [ -z "${OUTRIGGER_BIN:-}" ]; then
  (cd "$root" && cargo build -q -p outrigger)   # reuses the test build's dependencies
  export OUTRIGGER_BIN="$root/target/debug/outrigger"
fi
(cd ../client-node && npx tsc -p tsconfig.json)   # the client it runs on (file:../client-node)
npx tsc --noEmit -p tsconfig.json
npx biome lint src test bench.mjs check_readme.mjs
npx tsc -p tsconfig.json
node --test test/*.test.mjs                      # three sidecars on Redis
SIO_BACKEND=memory node --test test/*.test.mjs   # one sidecar on memory
node check_readme.mjs
