#!/usr/bin/env bash
# Installs what the tests need (idempotent), builds everything once, and
# runs every test: the Rust suites (unit tests, the conformance suites on
# memory and real Redis topologies, the end-to-end tests against real
# sidecar processes), the SDK guide as written, contract fuzzing, the chart
# checks, the examples, the benchmark smoke test and a 2-minute soak;
# formatting and Clippy's lints (-D warnings) are checked on the way.
# Ends with a table of each step's wall time, whether the run passed or not.
#
#   scripts/test.sh               everything (what .ci/run runs)
#   scripts/test.sh FILTER...     only the Rust tests, arguments to `cargo test`,
#                                 e.g. `scripts/test.sh -p outrigger-tests
#                                 --test suite -- cache_api::`
#
# The steps after the Rust tests run side by side: they share no ports
# (each picks free ones, except the SDK guide's 7480) and no files.
set -euo pipefail
cd "$(dirname "$0")/.."

logs=$(mktemp -d)
started=$SECONDS
names=()
secs=()
report() {
  local rc=$?
  if [ ${#names[@]} -gt 0 ]; then
    printf '\n%-56s %8s\n' "step" "seconds"
    for i in "${!names[@]}"; do printf '%-56s %8s\n' "${names[$i]}" "${secs[$i]}"; done
    printf '%-56s %8s\n' "total" "$((SECONDS - started))"
  fi
  rm -rf "$logs"
  exit $rc
}
trap report EXIT

# step NAME COMMAND...: runs COMMAND in the foreground, timed as NAME.
step() {
  local name=$1 t0=$SECONDS
  shift
  echo "=== $name"
  names+=("$name")
  secs+=("failed")
  "$@"
  secs[${#secs[@]}-1]=$((SECONDS - t0))
}

# start NAME COMMAND...: runs COMMAND in the background, its output kept
# in a log; `finish` waits for it.
start() {
  local name=$1
  shift
  (
    t0=$SECONDS
    rc=0
    "$@" >"$logs/$name.log" 2>&1 || rc=$?
    echo "$rc $((SECONDS - t0))" >"$logs/$name.status"
  ) &
  echo "$!" >"$logs/$name.pid"
}

# finish NAME...: waits for each background step in turn, prints its
# output, and fails (after all have finished) if any of them failed.
finish() {
  local failed=0 name rc took
  for name in "$@"; do
    wait "$(cat "$logs/$name.pid")" || true
    read -r rc took <"$logs/$name.status"
    echo "=== $name (exit $rc, ${took}s)"
    cat "$logs/$name.log"
    names+=("$name")
    if [ "$rc" -eq 0 ]; then secs+=("$took"); else secs+=("failed"); failed=1; fi
  done
  return $failed
}

step "install test prerequisites" scripts/install-test-deps.sh

# Lint while compiling: the workspace's own crates go through clippy-driver
# (scripts/clippy-rustc, warnings denied). Every cargo command below, and in
# the scripts started from here, inherits this, so none of them compiles
# the workspace again; a plain `cargo build` afterwards recompiles the
# workspace's crates once (not the dependencies).
export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-rustc"

if [ $# -gt 0 ]; then
  step "build plugins" scripts/build-plugins.sh
  step "install tools" scripts/install-test-deps.sh --tools
  step "TypeScript and Python plugins" scripts/build-plugins.sh --languages
  step "cargo test $*" cargo test --locked "$@"
  exit 0
fi

step "cargo fmt --check" cargo fmt --all --check
# Downloads (Python venvs, npm packages, helm) and the plugins written in
# TypeScript and Python (which the Rust tests load) overlap the compilation.
start "install tools, TypeScript and Python plugins" \
  bash -c 'scripts/install-test-deps.sh --tools && scripts/build-plugins.sh --languages'
step "build plugins (wasm32-wasip2)" scripts/build-plugins.sh
step "build workspace + clippy" cargo test --workspace --locked --no-run
step "one build for tests and scripts" scripts/check-one-build.sh
finish "install tools, TypeScript and Python plugins"
step "compile TypeScript and Python plugins" scripts/build-plugins.sh --compile
step "rust tests" cargo test --workspace --locked

start "sdk guide" scripts/check-sdk-guide.py
start "contract fuzzing" scripts/fuzz-contract.sh
start "chart" scripts/check-chart.sh
start "python client" sdk/client-python/check.sh
start "web console (headless Chromium)" tests/console/check.sh
# The Socket.IO adapter, the Node examples and the bench's Node rows use
# the Node client and the adapter as built by their checks.
start "node client, socket.io adapter, examples, bench --quick" \
  bash -c 'sdk/client-node/check.sh && sdk/socketio-adapter/check.sh && examples/run.sh && scripts/bench.sh --quick'
finish "sdk guide" "contract fuzzing" "chart" "python client" "web console (headless Chromium)" \
  "node client, socket.io adapter, examples, bench --quick"

# Alone, so that nothing else loads the machine while it measures: two
# sidecars under load and faults for 2 minutes end where they began.
step "soak (2 min)" scripts/soak.sh 120
