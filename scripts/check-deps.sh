#!/usr/bin/env bash
# Crates by dependency (run by `make test`): the data-path library (sluice-runtime) links no
# Kubernetes or plotting crate, and the `sluice` command (sluice-cli) no Kubernetes client; only
# the operator (sluice-vpa-operator) does. Built together, they still resolve this way: the
# workspace has no feature that would switch a client on for the others.
set -euo pipefail
cd "$(dirname "$0")/.."
deps() { cargo tree --quiet -e normal --prefix none --format '{p}' -p "$1" | awk '{print $1}' | sort -u; }
fail=0
forbid() {
  local package=$1 pattern=$2 found
  found=$(deps "$package" | grep -E "^($pattern)\$" || true)
  if [ -n "$found" ]; then
    echo "error: $package links $(echo "$found" | tr '\n' ' ')- keep it out (see ARCHITECTURE.md: crates by dependency)" >&2
    fail=1
  fi
}
forbid sluice-runtime 'kube|kube-core|kube-client|kube-runtime|k8s-openapi|schemars|plotters|sluice-vpa|sluice-vpa-operator'
forbid sluice-cli 'kube-client|kube-runtime|sluice-vpa-operator|tower-http|hyper-rustls'
deps sluice-vpa-operator | grep -qx kube-client || { echo "error: the check lists no kube-client for the operator: cargo tree's output changed" >&2; fail=1; }
[ "$fail" = 0 ] && echo "crates by dependency: sluice-runtime links no Kubernetes or plotting crate; sluice-cli no Kubernetes client"
exit "$fail"
