#!/usr/bin/env bash
# Runs the Node examples against OUTRIGGER_URL / OUTRIGGER_GRPC; the pinned
# dependencies (package-lock.json) are installed first if needed, by
# scripts/install-test-deps.sh --tools (which installs every test tool).
# The client library and the Socket.IO adapter (file:../../sdk/client-node,
# file:../../sdk/socketio-adapter) must be built: their checks build them,
# and test.sh runs the examples after.
set -euo pipefail
cd "$(dirname "$0")"
../../scripts/install-test-deps.sh --tools >/dev/null
node client_app.mjs
node grpc_app.mjs
node chat_check.mjs
