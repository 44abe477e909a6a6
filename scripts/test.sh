#!/usr/bin/env bash
# Installs the test prerequisites (idempotent), then runs every test in the
# workspace: unit tests, the conformance suites on memory and on real Redis
# servers, and the end-to-end tests against real sidecar processes (with
# the plugins built to WebAssembly first).
#
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh cache`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/build-plugins.sh
cargo test --workspace --locked "$@"
