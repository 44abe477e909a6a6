#!/usr/bin/env bash
# Runs every example against a live sidecar on Redis: starts a
# redis-server and an outrigger on free loopback ports, runs each example
# (each checks its own output and exits non-zero on a mismatch), stops both.
#
#   examples/run.sh            # all examples
#   examples/run.sh http       # only those whose path contains "http"
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for <what> <command...>: up to 30 s
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for redis redis-cli -p "$redis_port" ping

cargo build -q -p outrigger
http_port=$(free_port)
grpc_port=$(free_port)
OUTRIGGER_REDIS__URL="redis://127.0.0.1:$redis_port" \
OUTRIGGER_NAMESPACE=examples \
OUTRIGGER_HTTP__ADDR="127.0.0.1:$http_port" \
OUTRIGGER_GRPC__ADDR="127.0.0.1:$grpc_port" \
OUTRIGGER_RATELIMIT__POLICIES__LOGIN__ALGORITHM=gcra \
OUTRIGGER_RATELIMIT__POLICIES__LOGIN__LIMIT=5 \
OUTRIGGER_RATELIMIT__POLICIES__LOGIN__PERIOD=1m \
  target/debug/outrigger serve >"$work/outrigger.log" 2>&1 &
pids+=($!)
wait_for outrigger curl -sf "http://127.0.0.1:$http_port/readyz"

export OUTRIGGER_URL="http://127.0.0.1:$http_port"
export OUTRIGGER_GRPC="127.0.0.1:$grpc_port"
filter=${1:-}
status=0
for example in examples/http/walkthrough.sh examples/python/run.sh examples/node/run.sh; do
  [[ -n "$filter" && "$example" != *"$filter"* ]] && continue
  echo "== $example"
  if ! "$example"; then
    status=1
    echo "== $example FAILED; sidecar log:" >&2
    tail -50 "$work/outrigger.log" >&2
  fi
done
exit $status
