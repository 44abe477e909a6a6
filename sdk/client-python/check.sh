#!/usr/bin/env bash
# The Python client's checks: lint (ruff), types (mypy --strict), a wheel
# and an sdist built as a user would, the package installed from them, and
# its test suite and the README tour against live sidecars (memory and Redis) from
# target/debug/outrigger (OUTRIGGER_BIN overrides).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$root/scripts/install-test-deps.sh" --tools >/dev/null
venv="$root/.tools/venv-client-python"
cd "$here"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
if [ -z "${OUTRIGGER_BIN:-}" ]; then
  (cd "$root" && cargo build -q -p outrigger)   # reuses the test build's dependencies
  export OUTRIGGER_BIN="$root/target/debug/outrigger"
fi
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
"$venv/bin/python" -m build --no-isolation --outdir "$dist" . >"$dist/build.log" 2>&1 \
  || { cat "$dist/build.log"; exit 1; }
"$venv/bin/pip" install --quiet --force-reinstall --no-deps "$dist"/outrigger-*.whl
# The tests import the installed package, not the source tree.
cd "$dist"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/tests"
# The README's tour, as written.
"$venv/bin/python" "$here/check_readme.py"
