#!/usr/bin/env bash
# Offline validation of everything in deploy/ (run by `make test`): the base and every provider
# overlay are built with `kubectl kustomize`, validated against the Kubernetes schemas
# (kubernetes-validate --strict) and checked by a security linter (checkov: no failed checks;
# an exception is an annotation on the object that says why). The base holds the StreamPipeline
# CRD and the operator (deploy/crd, deploy/operator); custom resources are checked against the
# CRD's schema, and the operator's RBAC against what the reconciler calls, by the vpa crate's
# tests.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SLUICE_K8S_VENV:-${SLUICE_CACHE:-$HOME/.cache/sluice}/k8s-venv}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for target in base overlays/*/; do
  name=$(basename "$target")
  kubectl kustomize "$target" > "$out/$name.yaml"
  "$VENV/bin/kubernetes-validate" --strict --quiet "$out/$name.yaml"
  "$VENV/bin/checkov" -f "$out/$name.yaml" --framework kubernetes --compact --quiet --skip-download
  echo "deploy/$target: $(grep -c '^kind:' "$out/$name.yaml") objects valid, no failed checks"
done
# The example pipeline rendered for every tier on every provider profile (what the operator
# applies there), validated and linted together.
sluice() { (cd .. && cargo run -q -p sluice-runtime --bin sluice -- "$@"); }
rendered="$out/rendered.yaml"
: > "$rendered"
for profile in neutral overlays/*/; do
  placement=()
  if [ "$profile" != neutral ]; then
    placement=(--placement "$out/$(basename "$profile").yaml")
  fi
  for tier in critical standard tolerant; do
    { echo "---"; sluice render -f deploy/examples/streampipeline.yaml --tier "$tier" "${placement[@]}" \
        | sed "s/name: bookings-enrich/name: bookings-enrich-$tier-$(basename "$profile")/"; } >> "$rendered"
  done
done
# (kubernetes-validate has no schema for the VPA and says so per object: the vpa crate's tests
# check it against the official VPA CRD.)
if ! log=$("$VENV/bin/kubernetes-validate" --strict --quiet "$rendered" 2>&1); then
  echo "$log" >&2
  exit 1
fi
"$VENV/bin/checkov" -f "$rendered" --framework kubernetes --compact --quiet --skip-download
echo "deploy/examples rendered for 3 tiers x 5 profiles: $(grep -c '^kind:' "$rendered") objects valid, no failed checks"
# The container images' Dockerfile.
"$VENV/bin/checkov" -f images/Dockerfile --framework dockerfile --compact --quiet --skip-download
echo "deploy/images/Dockerfile: no failed checks"
# What the operator applies for the example pipeline (rendered by the vpa crate; its VPA is
# checked against the official VPA CRD by the crate's tests).
if ! out=$("$VENV/bin/kubernetes-validate" --strict --quiet examples/streampipeline-children.yaml 2>&1); then
  echo "$out" >&2
  exit 1
fi
"$VENV/bin/checkov" -f examples/streampipeline-children.yaml --framework kubernetes --compact --quiet --skip-download
echo "deploy/examples: valid, no failed checks"
