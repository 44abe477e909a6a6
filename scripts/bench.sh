#!/usr/bin/env bash
# The benchmark harness: the sidecar against direct Redis, in one run.
#
#   scripts/bench.sh            release build; regenerates BENCHMARKS.md and
#                               target/bench.json (about 5 minutes of runs),
#                               the Python and Node clients' rows and the
#                               Socket.IO adapter's included
#   scripts/bench.sh --quick    smoke test for CI: debug build, tiny windows,
#                               every cell exercised and checked, no timing;
#                               writes target/bench-quick.{md,json}
#
# Extra arguments go to outrigger-bench (see its --help), e.g.
# `scripts/bench.sh --window-ms 5000`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
scripts/install-test-deps.sh --tools >/dev/null   # the client libraries' benches
scripts/install-test-deps.sh --bench >/dev/null   # wrk, h2load, redis-benchmark
scripts/build-plugins.sh >/dev/null   # the plugin-call cost runs tenant-guard
scripts/build-plugins.sh --languages >/dev/null   # in TypeScript and Python too
(cd sdk/client-node && npx tsc -p tsconfig.json)   # its bench runs the built client
(cd sdk/socketio-adapter && npx tsc -p tsconfig.json)   # and the adapter's, the built adapter

if [ "${1:-}" = "--quick" ]; then
  shift
  cargo build -q --locked --bin outrigger --bin outrigger-bench
  exec target/debug/outrigger-bench --quick --sidecar target/debug/outrigger \
    --markdown target/bench-quick.md --json target/bench-quick.json "$@"
fi
cargo build --release --locked --bin outrigger --bin outrigger-bench
exec target/release/outrigger-bench --sidecar target/release/outrigger \
  --markdown BENCHMARKS.md --json target/bench.json "$@"
