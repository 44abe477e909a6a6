#!/usr/bin/env bash
# Runs the Python examples against OUTRIGGER_URL / OUTRIGGER_GRPC, in a
# virtualenv under .tools/ (created once, from requirements.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/.tools/venv-examples-python"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi
"$venv/bin/python" "$here/http_app.py"
"$venv/bin/python" "$here/grpc_app.py"
