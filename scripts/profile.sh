#!/usr/bin/env bash
# Flame graphs of the sidecar's request path, and where its CPU goes.
#
#   scripts/profile.sh LABEL    e.g. `before` or `after`
#
# Builds the `profiling` profile (release code with line tables, not
# stripped), runs `outrigger-bench` for a cache set, a lock acquire+release
# and a rate-limit check through the lean HTTP client at concurrency 64,
# with `perf record` (DWARF call graphs) on the sidecar over each timed
# window, and writes:
#   bench/flamegraphs/<op>-LABEL.svg      one flame graph per operation
#   bench/flamegraphs/<op>-LABEL.txt      the share of samples per part of
#                                         the path (scripts/profile-parts.py)
#                                         and the sidecar CPU µs per request
# Installs perf (apt linux-perf) and inferno (into .tools/bin) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:?usage: scripts/profile.sh LABEL}
scripts/install-test-deps.sh >/dev/null
scripts/install-test-deps.sh --bench >/dev/null
if ! command -v perf >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq linux-perf >/dev/null
  else sudo apt-get install -y -qq linux-perf >/dev/null; fi
fi
[ -x .tools/bin/inferno-flamegraph ] || cargo install --quiet --locked --root .tools inferno@^0.12
cargo build --profile profiling --locked --bin outrigger --bin outrigger-bench
out=bench/flamegraphs
data=target/perf-$label
rm -rf "$data"
mkdir -p "$out" "$data"
target/profiling/outrigger-bench --sidecar target/profiling/outrigger \
  --only "cache set" --only "lock acquire" --only "rate-limit check" \
  --via "http+uds raw" --concurrency 64 --window-ms 4000 \
  --perf "$data" --markdown "$data/bench.md" --json "$data/bench.json"
for file in "$data"/*.perf.data; do
  name=$(basename "$file" .perf.data)
  op=${name%%.*}
  perf script -i "$file" 2>/dev/null | .tools/bin/inferno-collapse-perf > "$data/$name.folded"
  .tools/bin/inferno-flamegraph --minwidth 2 --title "$op, http+uds raw, c=64 ($label)" \
    < "$data/$name.folded" > "$out/$op-$label.svg"
  cpu=$(python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
op = sys.argv[2].replace("_", " ")
print(next(r["cpu_ms_per_1k"] for r in rows if r["op"] == op and not r["via"].startswith("direct")))
' "$data/bench.json" "$op")
  python3 scripts/profile-parts.py "$data/$name.folded" "$cpu" > "$out/$op-$label.txt"
  echo "$out/$op-$label.svg"
  cat "$out/$op-$label.txt"
done
