"""The RBAC grants the sidecar the least it needs, and every Kubernetes manifest in deploy/
is a valid object of its kind (offline schemas from the kubernetes-validate package)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.k8s_schema import offline_schema_problems

ROOT = Path(__file__).resolve().parents[3]
RBAC = ROOT / "deploy" / "rbac"
ACCOUNT = ROOT / "deploy" / "kubernetes" / "base" / "service-account.yaml"
CRDS = [
    d
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
    for d in yaml.safe_load_all(path.read_text())
    if d
]
# Groups that kubernetes-validate has schemas for; anything else is a custom resource.
BUILT_IN_GROUPS = {
    "",
    "apps",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "apiextensions.k8s.io",
    "coordination.k8s.io",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(path) if d["kind"] == kind]
    return doc


def _built_in_manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # not an object; what the overlays render is checked in test_kustomize.py
        for doc in _docs(path):
            group = doc["apiVersion"].rpartition("/")[0]
            if group in BUILT_IN_GROUPS:
                found.append((str(path.relative_to(ROOT)), doc))
    return found


@pytest.mark.parametrize(
    "manifest", _built_in_manifests(), ids=lambda m: f"{m[0]}:{m[1]['kind']}/{m[1]['metadata']['name']}"
)
def test_every_kubernetes_manifest_is_valid_for_its_kind(manifest: tuple[str, dict[str, Any]]) -> None:
    _, doc = manifest
    assert offline_schema_problems(doc) == []


def test_the_offline_check_refuses_a_misspelt_field() -> None:
    """The check above can fail: a misspelt field of a Role is reported."""
    (_, role), *_ = [(w, d) for w, d in _built_in_manifests() if d["kind"] in ("Role", "ClusterRole")]
    broken = copy.deepcopy(role)
    broken["rules"][0]["verb"] = broken["rules"][0].pop("verbs")
    assert offline_schema_problems(broken) != []


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


READ = {"get", "list", "watch"}
OURS, SOLO, AGW, GW = (
    "budgets.extproc.dev",
    "enterpriseagentgateway.solo.io",
    "agentgateway.dev",
    "gateway.networking.k8s.io",
)
NAMESPACED_GRANTS = {
    (OURS, "budgets"): READ,
    (OURS, "budgetpolicies"): READ,
    (OURS, "budgetdimensions"): READ,
    (OURS, "budgets/status"): {"patch"},
    (OURS, "budgetpolicies/status"): {"patch"},
    (SOLO, "enterpriseagentgatewaybudgets"): READ,
    (SOLO, "enterpriseagentgatewaypolicies"): READ,
    (SOLO, "enterpriseagentgatewayparameters"): READ,
    (SOLO, "enterpriseagentgatewaybudgets/status"): {"patch"},
    (SOLO, "enterpriseagentgatewaypolicies/status"): {"patch"},
    (AGW, "enterpriseagentgatewayparameters"): READ,
    ("", "configmaps"): READ,
    (GW, "gateways"): READ,
    (GW, "httproutes"): READ,
}
CLUSTER_GRANTS = {**NAMESPACED_GRANTS, (OURS, "budgetnamespaces"): READ, ("", "namespaces"): READ}


def test_the_cluster_role_grants_exactly_reads_and_status_patches() -> None:
    role = _one(RBAC / "cluster-role.yaml", "ClusterRole")
    assert _rules(role) == CLUSTER_GRANTS


def test_the_namespaced_variant_reads_no_namespaces_and_nothing_cluster_wide() -> None:
    docs = _docs(RBAC / "namespaced" / "role.yaml")
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding"}
    role = _one(RBAC / "namespaced" / "role.yaml", "Role")
    assert _rules(role) == NAMESPACED_GRANTS
    binding = _one(RBAC / "namespaced" / "role.yaml", "RoleBinding")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }


def test_leases_are_a_role_in_the_sidecars_namespace() -> None:
    account = _one(ACCOUNT, "ServiceAccount")
    role = _one(RBAC / "leases.yaml", "Role")
    assert role["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert _rules(role) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    assert not any(
        "leases" in r
        for d in _docs(RBAC / "cluster-role.yaml")
        for rule in d.get("rules", [])
        for r in rule["resources"]
    )


def test_every_binding_names_the_sidecars_service_account_and_an_existing_role() -> None:
    account = _one(ACCOUNT, "ServiceAccount")
    subject = {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }
    roles = {
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        for path in RBAC.rglob("*.yaml")
        if path.name != "kustomization.yaml"
        for d in _docs(path)
        if d["kind"] in ("Role", "ClusterRole")
    }
    bindings = [
        d
        for path in RBAC.rglob("*.yaml")
        if path.name != "kustomization.yaml"
        for d in _docs(path)
        if d["kind"].endswith("Binding")
    ]
    assert len(bindings) == 3
    for binding in bindings:
        assert binding["subjects"] == [subject]
        namespace = binding["metadata"].get("namespace") if binding["roleRef"]["kind"] == "Role" else None
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"], namespace) in roles


def test_every_granted_custom_resource_exists_with_the_subresource_it_patches() -> None:
    served = {}
    for crd in CRDS:
        (version,) = crd["spec"]["versions"]
        served[(crd["spec"]["group"], crd["spec"]["names"]["plural"])] = version
    for group, resource in CLUSTER_GRANTS:
        if group not in (OURS, SOLO):
            continue
        plural, _, sub = resource.partition("/")
        assert (group, plural) in served, resource
        if sub:
            assert sub in served[(group, plural)].get("subresources", {}), resource
    # ...and every kind of ours is readable.
    assert {(g, p) for g, p in served} <= {key for key in CLUSTER_GRANTS}


def test_the_kind_sidecar_runs_as_the_service_account() -> None:
    account = _one(ACCOUNT, "ServiceAccount")
    deployment = _one(ROOT / "deploy" / "kind" / "extproc.yaml", "Deployment")
    assert deployment["metadata"]["namespace"] == account["metadata"]["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    # The account mounts no token by default; the Kubernetes source needs one.
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is True
