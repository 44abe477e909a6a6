#!/usr/bin/env bash
# Checks the Helm chart: lint (strict), render with the default values and
# every file in helm/outrigger/ci/, and validate the rendered manifests
# against the Kubernetes API schemas with kubernetes-validate.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=1.33.0
scripts/install-test-deps.sh --tools >/dev/null
helm=.tools/bin/helm
venv=.tools/venv

chart=helm/outrigger
"$helm" lint --strict "$chart"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
i=0
for values in "" "$chart"/ci/*.yaml; do
  i=$((i + 1))
  args=()
  [ -n "$values" ] && args=(-f "$values") && "$helm" lint --strict "$chart" "${args[@]}"
  "$helm" template demo "$chart" --kube-version "$KUBE_VERSION" "${args[@]}" > "$out/$i.yaml"
  "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$KUBE_VERSION" "$out/$i.yaml"
  # The outrigger.toml the chart renders must be one the sidecar accepts.
  "$venv/bin/python" - "$out/$i.yaml" "$out/$i.toml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and "outrigger.toml" in doc.get("data", {}):
        open(sys.argv[2], "w").write(doc["data"]["outrigger.toml"])
        break
else:
    sys.exit("no outrigger.toml ConfigMap rendered")
PY
  # Files the pod mounts from Secrets: stand in for them here.
  if grep -q /etc/outrigger/redis-tls/ "$out/$i.toml"; then
    mkdir -p "$out/redis-tls"
    for f in $(grep -o '/etc/outrigger/redis-tls/[^"]*' "$out/$i.toml"); do
      touch "$out/redis-tls/${f##*/}"
    done
    sed -i "s#/etc/outrigger/redis-tls/#$out/redis-tls/#g" "$out/$i.toml"
  fi
  cargo run -q -p outrigger -- --config "$out/$i.toml" check-config >/dev/null
  echo "chart ok with ${values:-default values}"
done
