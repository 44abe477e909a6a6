#!/usr/bin/env bash
# Runs the Node examples against OUTRIGGER_URL / OUTRIGGER_GRPC; the pinned
# dependencies (package-lock.json) are installed first if needed, by
# scripts/install-test-deps.sh --tools (which installs every test tool).
# The client library (file:../../sdk/client-node) must be built: its check
# (sdk/client-node/check.sh) builds it, and test.sh runs the examples after.
set -euo pipefail
cd "$(dirname "$0")"
../../scripts/install-test-deps.sh --tools >/dev/null
node client_app.mjs
node grpc_app.mjs
