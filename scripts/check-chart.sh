#!/usr/bin/env bash
# Checks the Helm chart: lint (strict), render with the default values and
# every file in helm/outrigger/ci/, and validate the rendered manifests
# against the Kubernetes API schemas with kubernetes-validate, the alert
# rules with promtool and the dashboard as JSON.
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
  # The monitoring the chart can ship: the dashboard must be JSON Grafana
  # reads, the rules what Prometheus accepts (the metric names they use are
  # checked against a live sidecar by tests/suite/monitoring.rs).
  "$venv/bin/python" - "$out/$i.yaml" "$out/$i.rules.yaml" <<'PY'
import json, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    if doc.get("kind") == "ConfigMap" and "outrigger.json" in doc.get("data", {}):
        dashboard = json.loads(doc["data"]["outrigger.json"])
        assert dashboard["panels"] and dashboard["uid"], "an empty dashboard"
    if doc.get("kind") == "PrometheusRule":
        yaml.safe_dump(doc["spec"], open(sys.argv[2], "w"))
PY
  if [ -f "$out/$i.rules.yaml" ]; then
    promtool check rules "$out/$i.rules.yaml"
  fi
  # Files the pod mounts from Secrets: stand in for them here.
  if grep -q /etc/outrigger/redis-tls/ "$out/$i.toml"; then
    mkdir -p "$out/redis-tls"
    for f in $(grep -o '/etc/outrigger/redis-tls/[^"]*' "$out/$i.toml"); do
      touch "$out/redis-tls/${f##*/}"
    done
    sed -i "s#/etc/outrigger/redis-tls/#$out/redis-tls/#g" "$out/$i.toml"
  fi
  # Plugins the pod mounts: the ones scripts/build-plugins.sh built stand
  # in, and a plugin's config_file from a Secret gets a made-up key.
  if grep -q /etc/outrigger/plugins/ "$out/$i.toml"; then
    scripts/build-plugins.sh >/dev/null
    sed -i "s#/etc/outrigger/plugins/#$PWD/${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/#g" "$out/$i.toml"
  fi
  if grep -q /etc/outrigger/plugin-secrets/ "$out/$i.toml"; then
    mkdir -p "$out/plugin-secrets"
    for f in $(grep -o '/etc/outrigger/plugin-secrets/[^"]*' "$out/$i.toml"); do
      printf '{"active":"k1","keys":{"k1":"%s"}}' "$(head -c 32 /dev/urandom | base64)" \
        > "$out/plugin-secrets/${f##*/}"
    done
    sed -i "s#/etc/outrigger/plugin-secrets/#$out/plugin-secrets/#g" "$out/$i.toml"
  fi
  cargo run -q -p outrigger -- --config "$out/$i.toml" check-config >/dev/null
  echo "chart ok with ${values:-default values}"
done
