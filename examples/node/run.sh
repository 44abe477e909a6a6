#!/usr/bin/env bash
# Runs the Node examples against OUTRIGGER_URL / OUTRIGGER_GRPC; installs
# the pinned dependencies (package-lock.json) first if needed.
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules/@grpc/grpc-js ] || npm ci --silent --no-audit --no-fund
node http_app.mjs
node grpc_app.mjs
