"""Evaluates the CEL in deploy/ offline (cel-python, installed by `make deps`): the CRD's
x-kubernetes-validations rules and the ValidatingAdmissionPolicies' match conditions,
variables and validations, against objects that must be admitted and objects that must be
refused. Run by deploy/check.sh. What only a real API server confirms: that it compiles the same
expressions within its cost budget, and Kubernetes' own CEL libraries (none are used here).
"""
import copy
import sys
from pathlib import Path

import celpy
import yaml

DEPLOY = Path(__file__).resolve().parent
ENV = celpy.Environment()
failures = []


def cel(expression, activation):
    program = ENV.program(ENV.compile(expression))
    result = program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()})
    if isinstance(result, celpy.CELEvalError):
        raise ValueError(f"{expression!r}: {result}")
    return result


def docs(path):
    with open(DEPLOY / path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def expect(what, got, want):
    if got != want:
        failures.append(f"{what}: expected {'admitted' if want else 'refused'}, got the opposite")


# --- the StreamPipeline CRD -----------------------------------------------------------------
crd = docs("crd/streampipelines.sluice.dev.yaml")[0]
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rules(node, path=()):
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for name, child in node.get("properties", {}).items():
        yield from rules(child, path + (name,))


def crd_errors(obj):
    errors = []
    for path, rule in rules(schema):
        value = obj
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        if not cel(rule["rule"], {"self": value}):
            errors.append(f"{'.'.join(path)}: {rule['message']}")
    return errors


example = docs("examples/streampipeline.yaml")[0]
assert list(rules(schema)), "the CRD has no CEL rules"
for replicas, admitted in [
    ({"min": 2, "max": 6}, True),
    ({"fixed": 4}, True),
    ({"min": 3}, True),
    ({"min": 6, "max": 6}, True),
    ({"min": 7, "max": 6}, False),
    ({"fixed": 4, "min": 2}, False),
    ({"fixed": 4, "max": 8}, False),
]:
    sp = copy.deepcopy(example)
    sp["spec"]["replicas"] = replicas
    expect(f"StreamPipeline replicas {replicas}", not crd_errors(sp), admitted)

# --- admission policies ---------------------------------------------------------------------


def admits(policy, request, obj, old=None, namespace=None):
    spec = policy["spec"]
    activation = {"request": request, "object": obj, "oldObject": old,
                  "namespaceObject": namespace or {"metadata": {"name": "default"}}}
    for condition in spec.get("matchConditions", []):
        if not cel(condition["expression"], activation):
            return True  # not matched: the policy does not apply
    variables = {}
    for variable in spec.get("variables", []):
        activation["variables"] = variables
        variables[variable["name"]] = cel(variable["expression"], activation)
    activation["variables"] = variables
    for validation in spec["validations"]:
        if not cel(validation["expression"], activation):
            if "messageExpression" in validation:
                message = cel(validation["messageExpression"], activation)
                assert isinstance(message, str) and message, "an empty message"
            return False
    return True


(guard,) = [d for d in docs("operator/admission.yaml") if d["kind"] == "ValidatingAdmissionPolicy"]
operator = "system:serviceaccount:sluice-system:sluice-vpa"
managed = {"metadata": {"name": "p", "labels": {"app.kubernetes.io/managed-by": "sluice-vpa"}}}
theirs = {"metadata": {"name": "p", "labels": {"app": "payments"}}}
unlabelled = {"metadata": {"name": "p"}}
req = lambda op, user=operator: {"operation": op, "userInfo": {"username": user},
                                 "resource": {"resource": "deployments"}}
for what, request, obj, old, admitted in [
    ("operator creates a managed object", req("CREATE"), managed, None, True),
    ("operator updates a managed object", req("UPDATE"), managed, managed, True),
    ("operator creates an unlabelled object", req("CREATE"), unlabelled, None, False),
    ("operator takes over another's object by labelling it", req("UPDATE"), managed, theirs, False),
    ("operator updates an unlabelled object", req("UPDATE"), managed, unlabelled, False),
    ("operator deletes another's object", req("DELETE"), None, theirs, False),
    ("someone else writes anything", req("UPDATE", "alice"), theirs, theirs, True),
    ("operator resizes a pipeline's pod in place", req("UPDATE"), managed, managed, True),
    ("operator resizes another team's pod", req("UPDATE"), theirs, theirs, False),
]:
    expect(f"admission.yaml: {what}", admits(guard, request, obj, old), admitted)

(gate,) = [d for d in docs("tiers/tier-gate.yaml") if d["kind"] == "ValidatingAdmissionPolicy"]
granted = {"metadata": {"name": "pipelines", "labels": {"sluice.dev/tier-critical": "granted"}}}
bare = {"metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-a"}}}
system = {"metadata": {"name": "sluice-system"}}
pod = lambda cls: {"metadata": {"name": "x"}, "spec": ({"priorityClassName": cls} if cls else {})}
sp_tier = lambda tier: {"metadata": {"name": "x"}, "spec": ({"tier": tier} if tier else {})}
on = lambda resource: {"operation": "CREATE", "userInfo": {"username": "u"},
                       "resource": {"resource": resource}}
for what, request, obj, ns, admitted in [
    ("a critical pod where critical is granted", on("pods"), pod("sluice-critical"), granted, True),
    ("a critical pod elsewhere", on("pods"), pod("sluice-critical"), bare, False),
    ("a tolerant pod where only critical is granted", on("pods"), pod("sluice-tolerant"), granted, False),
    ("a pod of another class", on("pods"), pod("system-cluster-critical"), bare, True),
    ("a pod without a class", on("pods"), pod(None), bare, True),
    ("an unknown sluice class", on("pods"), pod("sluice-premium"), granted, False),
    ("pause pods in sluice-system", on("pods"), pod("sluice-overprovisioning"), system, True),
    ("pause pods elsewhere", on("pods"), pod("sluice-overprovisioning"), granted, False),
    ("a critical StreamPipeline where granted", on("streampipelines"), sp_tier("critical"), granted, True),
    ("a critical StreamPipeline elsewhere", on("streampipelines"), sp_tier("critical"), bare, False),
    ("a StreamPipeline of the default tier (standard) elsewhere", on("streampipelines"), sp_tier(None), bare, False),
]:
    expect(f"tier-gate.yaml: {what}", admits(gate, request, obj, None, ns), admitted)

if failures:
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    sys.exit(1)
print("CEL: the CRD's rules and both admission policies admit and refuse as intended")
