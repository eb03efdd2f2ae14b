"""Health that keeps traffic up, and a drain that loses no stream, through a real Envoy.

Readiness does not depend on Redis (its state is /storez and a metric); SIGTERM makes the
sidecar unready and NOT_SERVING at once, takes new streams for the drain delay, then lets
streams far longer than the old 5-second grace finish with their spend recorded, and exits
0 with JSON lines only; a second SIGTERM cuts the drain short."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.e2e import redis_spend, token_budget
from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import Envoy, Sidecar
from tests.support.redis_server import free_port

pytestmark = pytest.mark.e2e

CONFIG = token_budget("drain", failure_mode="Open")
STREAM = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 40,
    "stream": True,
}
SLOW = {"x-mock-usage": "11,20", "x-mock-delay-ms": "200"}  # about 7 s a stream


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def all_json(sidecar: Sidecar) -> list[str]:
    """The lines of the sidecar's output that are not JSON (none expected)."""
    bad = []
    for line in sidecar.output().splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    return bad


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "budgets.yaml").write_text(CONFIG)
    return folder


async def test_readiness_does_not_depend_on_redis(config_dir: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    sidecar = Sidecar([str(config_dir)], redis_url=dead)
    try:
        admin = f"http://127.0.0.1:{sidecar.admin_port}"
        assert status(f"{admin}/readyz") == 200
        assert status(f"{admin}/storez") == 503
        assert grpc_health(sidecar.grpc_port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        sidecar.stop()


async def _streams(envoy: Envoy, n: int) -> list[asyncio.Future[object]]:
    clients = [HttpClient("127.0.0.1", envoy.port) for _ in range(n)]
    futures = [
        asyncio.ensure_future(c.post_json("/budget-demo/v1/chat/completions", STREAM, SLOW)) for c in clients
    ]
    await asyncio.sleep(1.0)  # admitted and streaming
    return futures


async def test_sigterm_drains_streams_longer_than_five_seconds_and_records_their_spend(
    config_dir: Path, e2e_redis: str, upstream: MockOpenAI
) -> None:
    redis.Redis.from_url(e2e_redis).flushall()
    extra = ["--drain-delay-seconds", "0.5", "--drain-seconds", "60"]
    sidecar = Sidecar([str(config_dir)], redis_url=e2e_redis, extra=extra)
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    try:
        streams = await _streams(envoy, 4)
        started = time.monotonic()
        sidecar.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert status(f"http://127.0.0.1:{sidecar.admin_port}/readyz") == 503  # at once
        assert grpc_health(sidecar.grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
        responses = await asyncio.gather(*streams)
        assert time.monotonic() - started > 5  # they ran past the old hard-coded grace
        assert [r.status for r in responses] == [200] * 4  # type: ignore[attr-defined]
        assert all(b"[DONE]" in r.body for r in responses)  # type: ignore[attr-defined]
        assert await asyncio.to_thread(sidecar.popen.wait, 30) == 0
        assert await redis_spend(e2e_redis, config_dir) == 4 * 31
        assert all_json(sidecar) == []
        events = [line.get("event") for line in sidecar.json_lines()]
        assert "draining" in events and "drained" in events
    finally:
        envoy.stop()
        sidecar.stop()


async def test_a_second_sigterm_cuts_the_drain_short_and_exits_cleanly(
    config_dir: Path, e2e_redis: str, upstream: MockOpenAI
) -> None:
    extra = ["--drain-delay-seconds", "0", "--drain-seconds", "60"]
    sidecar = Sidecar([str(config_dir)], redis_url=e2e_redis, extra=extra)
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    try:
        streams = await _streams(envoy, 2)
        sidecar.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        hurried = time.monotonic()
        sidecar.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(sidecar.popen.wait, 30) == 0
        assert time.monotonic() - hurried < 4  # not the 60 s drain
        await asyncio.gather(*streams, return_exceptions=True)
        assert all_json(sidecar) == []
        assert "drain cut short by a second signal" in [line.get("event") for line in sidecar.json_lines()]
    finally:
        envoy.stop()
        sidecar.stop()
