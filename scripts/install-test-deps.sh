#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine with Rust (rustup).
# Idempotent: installs only what is missing.
#
#   redis-server, redis-cli   the tests start their own servers on free ports
#   rustfmt, clippy           the lint step of .ci/run
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "installing redis-server and redis-tools (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" \
      || rustup component add "$component"
  done
fi

for tool in node npm python3 curl; do
  command -v "$tool" >/dev/null || echo "warning: $tool is missing: the examples and chart checks need it" >&2
done

echo "test prerequisites: $(redis-server --version | cut -d' ' -f1-3), $(cargo --version)"
