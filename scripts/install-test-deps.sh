#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine with Rust (rustup).
# Idempotent: installs only what is missing.
#
#   scripts/install-test-deps.sh           what building and the Rust tests need:
#     redis-server, redis-cli               the tests start their own servers on free ports
#     node, npm, python3 (venv), curl,      the clients, examples and scripts after the
#     openssl, unzip, promtool, chromium    Rust tests (apt, when missing)
#     rustfmt, clippy                       the lint step
#     the wasm32-wasip2 target              the plugins are built to it
#   scripts/install-test-deps.sh --bench   the C load generators scripts/bench.sh drives:
#                                           wrk, h2load (nghttp2-client), redis-benchmark
#   scripts/install-test-deps.sh --tools   what the scripts after them need:
#     .tools/venv-contract                  schemathesis (scripts/fuzz-contract.sh)
#     .tools/venv, .tools/bin/helm          kubernetes-validate, helm (scripts/check-chart.sh)
#     .tools/venv-examples-python           grpcio (examples/python)
#     .tools/venv-client-python             pytest, mypy, ruff, build (sdk/client-python)
#     .tools/venv-console                   playwright, pytest (tests/console: the web console)
#     .tools/venv-plugin-python             componentize-py (Python plugins)
#     examples/node/node_modules            @grpc/grpc-js (examples/node)
#     sdk/client-node/node_modules          typescript, biome, express, fastify (sdk/client-node)
#     sdk/socketio-adapter/node_modules     socket.io, socket.io-client, the Redis adapter (sdk/socketio-adapter)
#     sdk/plugin-js/node_modules            componentize-js, esbuild, typescript (TypeScript plugins)
#
# scripts/test.sh runs the second while the workspace compiles; the scripts
# that need those tools run it too (it only checks once they are there).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# venv DIR REQUIREMENTS MODULE: a virtualenv with REQUIREMENTS, unless
# MODULE already imports there and REQUIREMENTS did not change since.
venv() {
  local dir=$1 requirements=$2 module=$3
  if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "import $module" 2>/dev/null \
    || ! cmp -s "$requirements" "$dir/requirements.installed"; then
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet -r "$requirements"
    cp "$requirements" "$dir/requirements.installed"
  fi
}

if [ "${1:-}" = "--bench" ]; then
  # scripts/bench.sh (its --quick smoke test too): the C load generators.
  missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v redis-benchmark >/dev/null || missing+=(redis-tools)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  echo "bench tools: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), h2load, redis-benchmark"
  exit 0
fi

if [ "${1:-}" = "--tools" ]; then
  venv .tools/venv-contract scripts/requirements-contract.txt schemathesis
  venv .tools/venv scripts/requirements-chart.txt kubernetes_validate
  venv .tools/venv-examples-python examples/python/requirements.txt grpc_tools
  venv .tools/venv-client-python sdk/client-python/requirements-test.txt hatchling
  venv .tools/venv-console tests/console/requirements.txt playwright
  venv .tools/venv-plugin-python sdk/plugin-python/requirements.txt componentize_py
  for dir in examples/node sdk/client-node sdk/socketio-adapter sdk/plugin-js; do
    cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json" \
      || (cd "$dir" && npm ci --silent --no-audit --no-fund \
        && cp package-lock.json node_modules/.installed-lock.json)
  done
  scripts/install-helm.sh
  echo "tools: schemathesis, kubernetes-validate, grpcio, pytest/mypy/ruff, playwright, componentize-py, componentize-js, @grpc/grpc-js, helm $(.tools/bin/helm version --short)"
  exit 0
fi

missing=()
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server redis-tools)
command -v unzip >/dev/null || missing+=(unzip) # scripts/install-helm.sh
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm) # clients, examples
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv) # the tools' virtualenvs
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl) # the TLS tests' certificates
command -v promtool >/dev/null || missing+=(prometheus) # promtool: the chart's alert rules
command -v chromium >/dev/null || missing+=(chromium) # the web console's browser tests
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" \
      || rustup component add "$component"
  done
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi

echo "test prerequisites: $(redis-server --version | cut -d' ' -f1-3), $(cargo --version)"
