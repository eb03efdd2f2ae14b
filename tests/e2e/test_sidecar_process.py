"""The running sidecar process: gRPC health and reflection, the admin endpoints, the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.e2e import call
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import ROOT, Envoy, Sidecar
from tests.support.redis_server import free_port

EXAMPLES_DIR = str(ROOT / "examples")

pytestmark = pytest.mark.e2e


def test_grpc_health_says_serving_for_the_server_and_the_ext_proc_service(
    replicas: list[tuple[Sidecar, Envoy]],
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{replicas[0][0].grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services_for_grpcurl(replicas: list[tuple[Sidecar, Envoy]]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{replicas[0][0].grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert "envoy.service.ext_proc.v3.ExternalProcessor" in names
    assert "grpc.health.v1.Health" in names


async def test_admin_port_serves_metrics_health_and_readiness(
    client_a: HttpClient, replicas: list[tuple[Sidecar, Envoy]]
) -> None:
    await call(client_a, (21, 683))
    base = f"http://127.0.0.1:{replicas[0][0].admin_port}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=2) as r:
        metrics = r.read().decode()
    assert 'extproc_requests_total{outcome="counted",route="budget-demo"}' in metrics
    assert "extproc_cost_nano_usd_total" in metrics
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"{base}{path}", timeout=2) as r:
            assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/nope", timeout=2)
    assert missing.value.code == 404


def test_serve_refuses_an_invalid_configuration_with_file_line_problems(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: budgets.extproc.dev/v1alpha1\nkind: Budget\nmetadata: {name: b}\nspec:\n"
        "  budgets:\n  - name: Bad_Name\n    limit: {unit: USD, amount: 5}\n"
        "    window: {unit: Day}\n    onBudgetExceeded: Block\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "serve", "--config", str(bad), "--grpc-address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert f"{bad}:6: spec.budgets[0].name:" in proc.stderr


async def test_prefork_workers_share_the_port_and_the_spend(
    e2e_redis: str, upstream, fresh_spend: None
) -> None:
    sidecar = Sidecar([str(ROOT / "examples")], redis_url=e2e_redis, extra=["--workers", "2"])
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        serving = [x for x in sidecar.json_lines() if x.get("event") == "serving"]
        for _ in range(100):
            if len(serving) >= 2:
                break
            await asyncio.sleep(0.05)
            serving = [x for x in sidecar.json_lines() if x.get("event") == "serving"]
        assert len({x["pid"] for x in serving}) == 2
        assert (await call(client, (1000, 1000))).status == 200
        # Whichever worker takes the next stream, the spend is in Redis: blocked.
        for _ in range(4):
            fresh = HttpClient("127.0.0.1", envoy.port)
            try:
                assert (await call(fresh, (1, 1))).status == 429
            finally:
                await fresh.close()
    finally:
        await client.close()
        envoy.stop()
        sidecar.stop()


def test_workers_without_redis_are_refused(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "serve", "--config", str(ROOT / "examples"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "several workers need a shared spend store" in proc.stdout


async def test_spend_can_be_read_from_a_running_in_memory_sidecar(upstream) -> None:
    sidecar = Sidecar([str(ROOT / "examples")])
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        assert (await call(client, (21, 683))).status == 200
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "extproc.cli",
                "spend",
                "--sidecar",
                f"http://127.0.0.1:{sidecar.admin_port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        await client.close()
        envoy.stop()
        sidecar.stop()
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    tokens = rows["agentgateway-system/budget-demo/demo-token-block"]
    assert tokens[5:8] == ["704", "2000", "1296"]
    usd = rows["agentgateway-system/budget-demo/demo-usd-audit"]
    assert usd[5] == "0.0068825"


@pytest.mark.parametrize("which", ["admin", "grpc"])
def test_a_second_sidecar_on_a_port_in_use_fails_clearly_instead_of_sharing_it(which: str) -> None:
    """Without --workers nothing binds with SO_REUSEPORT: the second process does not start
    "serving" beside the first to answer every other request."""
    first = Sidecar([EXAMPLES_DIR])
    try:
        grpc_port = first.grpc_port if which == "grpc" else free_port()
        admin_port = first.admin_port if which == "admin" else free_port()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "extproc.cli",
                "serve",
                "--config",
                EXAMPLES_DIR,
                "--grpc-address",
                f"127.0.0.1:{grpc_port}",
                "--admin-address",
                f"127.0.0.1:{admin_port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert second.returncode == 2
        errors = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
        assert any(
            e.get("event") == f"cannot bind the {'admin' if which == 'admin' else 'gRPC'} address"
            for e in errors
        )
    finally:
        first.stop()


async def test_an_untouched_route_answers_with_the_sidecar_gone(upstream: MockOpenAI) -> None:
    """Zero blast radius: ext_proc is disabled on routes no budget covers (ExtProcPerRoute),
    so they open no stream and do not fail with the sidecar, while an enforced route does
    (failure_mode_allow: false)."""
    sidecar = Sidecar([EXAMPLES_DIR])
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        sidecar.kill()
        untouched = await call(client, (5, 5), path="/openai/v1/chat/completions")
        enforced = await call(client, (5, 5))
        assert (untouched.status, enforced.status) == (200, 500)
    finally:
        await client.close()
        envoy.stop()
        sidecar.stop()


async def test_opted_in_routes_only_the_shape_of_the_istio_envoyfilter(upstream: MockOpenAI) -> None:
    """envoy/envoy-opt-in.yaml: the filter disabled by default and enabled per route, as
    deploy/istio/envoyfilter.yaml patches an Istio gateway. The enabled route is enforced
    (it fails closed with the sidecar gone); the others open no stream and keep answering."""
    sidecar = Sidecar([EXAMPLES_DIR])
    envoy = Envoy(upstream.port, [sidecar.grpc_port], template="envoy-opt-in.yaml")
    client = HttpClient("127.0.0.1", envoy.port)
    try:
        assert (await call(client, (5, 5))).status == 200
        before = len([x for x in sidecar.json_lines() if x.get("event") == "request"])
        assert before == 1  # the enabled route went through the sidecar
        sidecar.kill()
        untouched = await call(client, (5, 5), path="/openai/v1/chat/completions")
        enforced = await call(client, (5, 5))
        assert (untouched.status, enforced.status) == (200, 500)
    finally:
        await client.close()
        envoy.stop()
        sidecar.stop()
