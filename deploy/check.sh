#!/usr/bin/env bash
# Offline validation of everything in deploy/ (run by `make test`): the base and every provider
# overlay are built with `kubectl kustomize`, validated against the Kubernetes schemas
# (kubernetes-validate --strict) and checked by a security linter (checkov: no failed checks;
# an exception is an annotation on the object that says why). The base holds the StreamPipeline
# CRD and the operator (deploy/crd, deploy/operator); custom resources are checked against the
# CRD's schema, and the operator's RBAC against what the reconciler calls, by the vpa crate's
# tests. Every VerticalPodAutoscaler the project can emit is validated against the VPA's v1
# schema (validate-vpa.mjs), and the CEL of the CRD and the admission policies is evaluated on
# objects to admit and to refuse (check_cel.py).
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
VENV=${SLUICE_K8S_VENV:-$CACHE/k8s-venv}
NODE_MODULES=${SLUICE_NODE_MODULES:-$CACHE/node}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The operator in every namespace (the cluster-wide component), as an overlay would use it.
cluster_wide=$(mktemp -d -p . cluster-wide.XXXX)
trap 'rm -rf "$out" "$cluster_wide"' EXIT
printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\ncomponents: [../operator/cluster-wide]\n' \
  > "$cluster_wide/kustomization.yaml"
for target in base overlays/*/ "$cluster_wide"; do
  name=$(basename "$target")
  kubectl kustomize "$target" > "$out/$name.yaml"
  "$VENV/bin/kubernetes-validate" --strict --quiet "$out/$name.yaml"
  "$VENV/bin/checkov" -f "$out/$name.yaml" --framework kubernetes --compact --quiet --skip-download
  echo "deploy/$target: $(grep -c '^kind:' "$out/$name.yaml") objects valid, no failed checks"
done
grep -q 'kind: ClusterRoleBinding' "$out/$(basename "$cluster_wide").yaml"
grep -q 'SLUICE_VPA_WATCH_NAMESPACES' "$out/$(basename "$cluster_wide").yaml"
# The example pipeline rendered for every tier on every provider profile (what the operator
# applies there), validated and linted together.
sluice() { (cd .. && cargo run -q -p sluice-cli --bin sluice -- "$@"); }
rendered="$out/rendered.yaml"
: > "$rendered"
for profile in neutral overlays/*/; do
  placement=()
  if [ "$profile" != neutral ]; then
    placement=(--placement "$out/$(basename "$profile").yaml")
  fi
  for tier in critical standard tolerant; do
    { sluice render -f deploy/examples/streampipeline.yaml --tier "$tier" "${placement[@]}" \
        | sed "s/name: bookings-enrich/name: bookings-enrich-$tier-$(basename "$profile")/"; } >> "$rendered"
  done
done
# ... and with the operator applying requests itself (the VPA only recommends: updateMode Off).
operator_mode="$out/operator-mode.yaml"
sed 's/appliedBy: vpa/appliedBy: operator/' examples/streampipeline.yaml > "$operator_mode"
grep -q 'appliedBy: operator' "$operator_mode"
(cd .. && cargo run -q -p sluice-cli --bin sluice -- render -f "$operator_mode") \
  | sed 's/name: bookings-enrich/name: bookings-enrich-operator-mode/' >> "$rendered"
# ... and in place (the VPA keeps memory only: controlledResources [memory]).
in_place="$out/in-place.yaml"
sed 's/appliedBy: vpa/appliedBy: in-place/' examples/streampipeline.yaml > "$in_place"
grep -q 'appliedBy: in-place' "$in_place"
(cd .. && cargo run -q -p sluice-cli --bin sluice -- render -f "$in_place") \
  | sed 's/name: bookings-enrich/name: bookings-enrich-in-place/' >> "$rendered"
# ... and on a Kafka that authenticates (Secrets mounted as files).
(cd .. && cargo run -q -p sluice-cli --bin sluice -- render -f deploy/examples/streampipeline-secured.yaml) \
  >> "$rendered"
# (kubernetes-validate has no schema for the VPA and says so per object: validate-vpa.mjs checks
# every VPA below.)
if ! log=$("$VENV/bin/kubernetes-validate" --strict --quiet "$rendered" 2>&1); then
  echo "$log" >&2
  exit 1
fi
"$VENV/bin/checkov" -f "$rendered" --framework kubernetes --compact --quiet --skip-download
echo "deploy/examples rendered for 3 tiers x 5 profiles: $(grep -c '^kind:' "$rendered") objects valid, no failed checks"
# The container images' Dockerfile.
"$VENV/bin/checkov" -f images/Dockerfile --framework dockerfile --compact --quiet --skip-download
echo "deploy/images/Dockerfile: no failed checks"
# What the operator applies for the example pipeline (rendered by the vpa crate).
if ! log=$("$VENV/bin/kubernetes-validate" --strict --quiet examples/streampipeline-children.yaml 2>&1); then
  echo "$log" >&2
  exit 1
fi
"$VENV/bin/checkov" -f examples/streampipeline-children.yaml --framework kubernetes --compact --quiet --skip-download
echo "deploy/examples: valid, no failed checks"
# Every VerticalPodAutoscaler the project can emit (the committed example children, `sluice
# render` for every tier and profile, and appliedBy: operator), read by a YAML 1.1 parser
# (PyYAML) as older tools would, against the VPA's v1 schema from the official CRD.
"$VENV/bin/python" - "$out/vpas.json" examples/streampipeline-children.yaml "$rendered" <<'PY'
import json, sys, yaml
vpas = [{"source": path, "object": doc}
        for path in sys.argv[2:]
        for doc in yaml.safe_load_all(open(path))
        if doc and doc.get("kind") == "VerticalPodAutoscaler"]
json.dump(vpas, open(sys.argv[1], "w"))
PY
node validate-vpa.mjs "$NODE_MODULES" "$out/vpas.json"
# The CEL of the CRD and the admission policies, evaluated.
"$VENV/bin/python" check_cel.py
