#!/usr/bin/env bash
# Runs the Python examples against OUTRIGGER_URL / OUTRIGGER_GRPC, in a
# virtualenv under .tools/ (made once from requirements.txt by
# scripts/install-test-deps.sh --tools, which installs every test tool).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$root/scripts/install-test-deps.sh" --tools >/dev/null
venv="$root/.tools/venv-examples-python"
"$venv/bin/python" "$here/client_app.py"
"$venv/bin/python" "$here/grpc_app.py"
