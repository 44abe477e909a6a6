#!/usr/bin/env bash
# Runs the Node examples against OUTRIGGER_URL / OUTRIGGER_GRPC; the pinned
# dependencies (package-lock.json) are installed first if needed, by
# scripts/install-test-deps.sh --tools (which installs every test tool).
set -euo pipefail
cd "$(dirname "$0")"
../../scripts/install-test-deps.sh --tools >/dev/null
node http_app.mjs
node grpc_app.mjs
