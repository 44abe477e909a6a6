#!/usr/bin/env bash
# A curl walk-through of every primitive, checking each answer.
# Needs a running sidecar: OUTRIGGER_URL (default http://127.0.0.1:7480),
# with the rate-limit policy `login` (gcra, 5 per minute) configured, as
# examples/run.sh starts it.
set -euo pipefail
S=${OUTRIGGER_URL:-http://127.0.0.1:7480}
run=$(date +%s%N)   # keeps runs apart on a shared Redis

expect() { # expect <what> <needle> <haystack>
  if [[ "$3" != *"$2"* ]]; then echo "FAIL $1: expected $2 in: $3" >&2; exit 1; fi
  echo "ok   $1"
}

# Cache: a session with a TTL and a tag.
out=$(curl -sf -X PUT "$S/v1/cache/session:$run?ttl_ms=60000&tags=user:$run" --data-binary 'alice')
expect "cache set returns a version" '"version":' "$out"
out=$(curl -sf "$S/v1/cache/session:$run")
expect "cache get returns the value" "alice" "$out"
out=$(curl -s -X POST "$S/v1/cache/invalidate" -d "{\"tags\": [\"user:$run\"]}")
expect "tag invalidation deletes it" '"deleted":1' "$out"
code=$(curl -s -o /dev/null -w '%{http_code}' "$S/v1/cache/session:$run")
expect "then it is gone" 404 "$code"

# Login throttling: 5 allowed, then 429 with Retry-After.
for _ in 1 2 3 4 5; do curl -sf -o /dev/null -X POST "$S/v1/ratelimit/login/check" -d "{\"key\": \"alice-$run\"}"; done
out=$(curl -s -i -X POST "$S/v1/ratelimit/login/check" -d "{\"key\": \"alice-$run\"}")
expect "the sixth login attempt is throttled" "429" "$out"
expect "with Retry-After" "retry-after:" "${out,,}"

# A lock: taken once, refused twice, released.
out=$(curl -sf -X POST "$S/v1/locks/checkout-$run/acquire" -d '{"ttl_ms": 10000}')
expect "lock acquired with a fence" '"fence":' "$out"
token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$out")
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$S/v1/locks/checkout-$run/acquire" -d '{"ttl_ms": 10000}')
expect "a second acquire is refused" 409 "$code"
out=$(curl -sf -X POST "$S/v1/locks/checkout-$run/release" -d "{\"token\": \"$token\"}")
expect "release with the token" '"released":true' "$out"

# Who is online.
curl -sf -o /dev/null -X PUT "$S/v1/presence/lobby-$run/alice" -d '{"metadata": {"name": "Alice"}, "ttl_ms": 30000}'
curl -sf -o /dev/null -X PUT "$S/v1/presence/lobby-$run/bob" -d '{"ttl_ms": 30000}'
out=$(curl -sf "$S/v1/presence/lobby-$run")
expect "alice is online" '"member":"alice"' "$out"
expect "bob is online" '"member":"bob"' "$out"

# Room messages over Server-Sent Events.
events=$(mktemp)
curl -sN --max-time 3 "$S/v1/pubsub/room-$run" > "$events" &
sse=$!
sleep 0.5   # let the subscription open (curl gives no other signal)
for m in hello there; do curl -sf -o /dev/null -X POST "$S/v1/pubsub/room-$run" --data-binary "$m"; done
wait "$sse" || true
expect "the subscriber got the first message" '"payload":"hello"' "$(cat "$events")"
expect "and the second" '"payload":"there"' "$(cat "$events")"
rm -f "$events"
echo "http walk-through: all checks passed"
