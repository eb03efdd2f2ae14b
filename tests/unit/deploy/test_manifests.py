"""The deploy manifests parse, and their ext_proc filter blocks are valid Envoy protos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = sorted(p for p in (ROOT / "deploy").rglob("*.yaml") if p.name != "kustomization.yaml")


def _ext_proc_configs(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        typed = node.get("typed_config")
        if node.get("name") == "envoy.filters.http.ext_proc" and isinstance(typed, dict):
            found.append(typed)
        for value in node.values():
            found += _ext_proc_configs(value)
    elif isinstance(node, list):
        for value in node:
            found += _ext_proc_configs(value)
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_is_kubernetes_yaml(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    assert all({"apiVersion", "kind", "metadata"} <= d.keys() for d in docs)


def test_every_ext_proc_block_parses_as_envoys_proto_and_matches_the_tested_one() -> None:
    tested = _ext_proc_configs(yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text().replace("$", "")))
    istio = _ext_proc_configs(yaml.safe_load((ROOT / "deploy" / "istio" / "envoyfilter.yaml").read_text()))
    jwt = _ext_proc_configs(yaml.safe_load((ROOT / "envoy" / "envoy-jwt.yaml").read_text().replace("$", "")))
    assert len(tested) == 1 and len(istio) == 1 and len(jwt) == 1
    parsed = []
    for block in (*tested, *istio, *jwt):
        message = ext_proc_pb2.ExternalProcessor()
        json_format.ParseDict({k: v for k, v in block.items() if k != "@type"}, message)
        # Each names its gateway for policies' Gateway targetRefs (the value is per gateway).
        assert [m.key for m in message.grpc_service.initial_metadata] == ["x-extproc-gateway"]
        assert message.grpc_service.initial_metadata[0].value.count("/") == 1
        message.ClearField("grpc_service")  # the cluster name and gateway differ by platform
        parsed.append(message)
    assert parsed[0] == parsed[1] == parsed[2]
    assert list(parsed[0].request_attributes) == ["xds.route_name"]
    assert parsed[0].allow_mode_override


def test_the_images_default_config_path_is_in_the_image() -> None:
    """`docker run IMAGE` with no flags serves the examples: the default EXTPROC_CONFIG is a
    folder the Dockerfile copies in, and the image runs as a non-root user."""
    text = (ROOT / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]
    copied = {line.split()[-1] for line in final.splitlines() if line.startswith("COPY ")}
    (config,) = [w.split("=", 1)[1] for w in final.split() if w.startswith("EXTPROC_CONFIG=")]
    assert config in copied
    (user,) = [line.split()[1] for line in final.splitlines() if line.startswith("USER ")]
    assert user != "0" and user != "root"


def test_the_istio_filter_is_off_by_default_and_enabled_on_the_llm_routes_only() -> None:
    """Zero blast radius on Istio: the filter inserted disabled, a route patch enabling it
    (the mechanics proven with a real Envoy on envoy/envoy-opt-in.yaml), on the gateways
    Istio makes for Gateway API resources."""
    from envoy.config.route.v3 import route_components_pb2
    from google.protobuf import any_pb2  # noqa: F401  (registers the Any type)

    (doc,) = [
        d for d in yaml.safe_load_all((ROOT / "deploy" / "istio" / "envoyfilter.yaml").read_text()) if d
    ]
    spec = doc["spec"]
    assert spec["workloadSelector"]["labels"] == {"gateway.networking.k8s.io/gateway-name": "llm-gateway"}
    filters = [p for p in spec["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    routes = [p for p in spec["configPatches"] if p["applyTo"] == "HTTP_ROUTE"]
    assert [f["patch"]["value"]["disabled"] for f in filters] == [True]
    assert routes and all(r["match"]["routeConfiguration"]["vhost"]["route"]["name"] for r in routes)
    for route in routes:
        per_filter = route["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
        message = route_components_pb2.Route()
        json_format.ParseDict(
            {"name": "x", "typed_per_filter_config": {"envoy.filters.http.ext_proc": per_filter}}, message
        )
        assert "envoy.filters.http.ext_proc" in message.typed_per_filter_config
