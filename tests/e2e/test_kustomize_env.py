"""The Deployment that `kubectl kustomize deploy/kubernetes/overlays/files-mtls` renders, run
as a real process: its environment (paths moved under a temporary folder, the Secret's URL
pointing at a real Redis), its ConfigMap as the config folder and certificates the test makes
where cert-manager's Secret is mounted. It serves mTLS, is ready, and exits 0 on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from tests.e2e.test_transport import health
from tests.support.certs import make_certs
from tests.support.procs import Proc, wait_for
from tests.support.redis_server import free_port
from tests.unit.deploy.test_kustomize import render

pytestmark = pytest.mark.e2e

MOUNTED = ("/etc/extproc/", "/var/lib/extproc/")


def _moved(value: str, root: Path) -> str:
    for prefix in MOUNTED:
        if value.startswith(prefix):
            return str(root / value.removeprefix("/"))
    return value


def _deployment_env(docs: tuple[dict[str, Any], ...], root: Path, redis_url: str) -> dict[str, str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for entry in container["env"]:
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            assert source["secretKeyRef"] == {"name": "extproc-budgets-redis", "key": "url"}
            env[entry["name"]] = redis_url
        elif "fieldRef" in source:
            env[entry["name"]] = {"metadata.name": "extproc-budgets-0", "metadata.namespace": "ns"}[
                source["fieldRef"]["fieldPath"]
            ]
        else:
            env[entry["name"]] = _moved(entry["value"], root)
    for mount in container["volumeMounts"]:
        (root / mount["mountPath"].removeprefix("/")).mkdir(parents=True, exist_ok=True)
    return env


def test_the_rendered_deployment_serves_mtls_is_ready_and_drains_to_exit_0(
    e2e_redis: str, tmp_path: Path
) -> None:
    docs = render("overlays/files-mtls")
    env = _deployment_env(docs, tmp_path, e2e_redis)
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    for key, text in config_map["data"].items():
        Path(env["EXTPROC_CONFIG"], key).write_text(text)
    certs = make_certs(tmp_path / "made")
    # The three keys cert-manager writes into the Secret the Deployment mounts.
    shutil.copy(certs.server_cert, env["EXTPROC_GRPC_TLS_CERT"])
    shutil.copy(certs.server_key, env["EXTPROC_GRPC_TLS_KEY"])
    shutil.copy(certs.ca, env["EXTPROC_GRPC_CLIENT_CA"])
    grpc_port, admin_port = free_port(), free_port()
    env |= {
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",  # the image's ENV says 0.0.0.0
        "EXTPROC_ADMIN_ADDRESS": f"127.0.0.1:{admin_port}",
    }
    proc = Proc("sidecar", [sys.executable, "-m", "extproc.cli", "serve"], env=env)  # the image's entrypoint
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status == 200,
            "ready",
            proc=proc,
        )
        assert health(grpc_port, certs, client=True) == health_pb2.HealthCheckResponse.SERVING
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0
        lines = proc.output().splitlines()
        assert lines and all(line.startswith("{") for line in lines), lines
        assert Path(env["EXTPROC_JOURNAL_DIR"]).is_dir()
    finally:
        proc.stop()
