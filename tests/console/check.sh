#!/usr/bin/env bash
# The web console in headless Chromium (Debian's package) driven by
# Playwright, against sidecars from target/debug/outrigger (OUTRIGGER_BIN
# overrides). Screenshots go to target/console-screenshots/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$root/scripts/install-test-deps.sh" --tools >/dev/null
if [ -z "${OUTRIGGER_BIN:-}" ]; then
  (cd "$root" && cargo build -q -p outrigger)   # reuses the test build's dependencies
  export OUTRIGGER_BIN="$root/target/debug/outrigger"
fi
cd "$root"
.tools/venv-console/bin/python -m pytest -q -p no:cacheprovider -s tests/console
