#!/usr/bin/env bash
# Contract fuzzing: schemathesis generates requests from /openapi.json and
# sends them to a live sidecar on the memory backend. Fails on any 5xx, any
# response that does not match the document (status, headers, content type,
# body schema) or a crash.
#
# Not checked: "schema-valid request rejected" (the document cannot express
# every rule, e.g. which cursors a listing handed out), and "use after
# free" (a deleted map and a trimmed history read as empty, 200, by design:
# an absent map is an empty one at version 0). Not fuzzed: the endless
# Server-Sent Events streams (the integration tests cover them).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh --tools >/dev/null
venv=.tools/venv-contract
cargo build -q -p outrigger

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
# Waits are capped at 250 ms: a generated acquire, claim or lease may
# legitimately wait up to limits.max_wait (for a lock another one holds, a
# job in an empty queue), and thousands of them waiting seconds each made
# this step three times as long (173 s against 57 s). Longer waits are
# refused (400, naming limits.max_wait), which the fuzzer checks too.
OUTRIGGER_HTTP__ADDR="127.0.0.1:$port" OUTRIGGER_GRPC__ADDR=127.0.0.1:0 \
OUTRIGGER_LIMITS__MAX_WAIT=250ms \
OUTRIGGER_RATELIMIT__POLICIES__LOGIN__ALGORITHM=gcra \
OUTRIGGER_RATELIMIT__POLICIES__LOGIN__LIMIT=5 \
OUTRIGGER_RATELIMIT__POLICIES__LOGIN__PERIOD=1m \
  target/debug/outrigger serve >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done

"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance,use_after_free \
  --exclude-operation-id subscribe --exclude-operation-id presence_events \
  --exclude-operation-id map_events \
  --max-examples 50 --request-timeout 5 --no-color

# The sidecar survived all of it.
kill -0 "$pid" || { echo "the sidecar died under fuzzing:"; cat "$log"; exit 1; }
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null
echo "contract fuzzing: clean"
