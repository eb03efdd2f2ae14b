"""Health that keeps traffic up, and a drain that loses no stream, through a real Envoy.

Readiness does not depend on Redis (its state is /storez and a metric); SIGTERM makes the
sidecar unready and NOT_SERVING at once, takes new streams for the drain delay, then lets
streams far longer than the old 5-second grace finish with their spend recorded, and exits
0 with JSON lines only; a second SIGTERM cuts the drain short."""

from __future__ import annotations

import asyncio
import json
import os
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
from tests.support.redis_server import free_port, start_redis

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


async def test_a_drain_deadline_shorter_than_a_stream_charges_each_cut_stream_an_estimate(
    config_dir: Path, e2e_redis: str, upstream: MockOpenAI
) -> None:
    """Streams of ~7 s, a 2 s drain: the deadline cuts them, says so, and each cut stream
    (whose usage never arrived) is charged an estimate, logged with its tokens: none free."""
    redis.Redis.from_url(e2e_redis).flushall()
    extra = ["--drain-delay-seconds", "0", "--drain-seconds", "2"]
    sidecar = Sidecar([str(config_dir)], redis_url=e2e_redis, extra=extra)
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    try:
        streams = await _streams(envoy, 3)
        started = time.monotonic()
        sidecar.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(sidecar.popen.wait, 30) == 0
        assert time.monotonic() - started < 6  # the deadline, not the streams' end
        await asyncio.gather(*streams, return_exceptions=True)
        assert all_json(sidecar) == []
        lines = sidecar.json_lines()
        (deadline,) = [line for line in lines if line.get("event", "").startswith("drain deadline reached")]
        assert deadline["open_streams"] == 3 and deadline["level"] == "warning"
        cut = [line for line in lines if line.get("event", "").startswith("stream cut by the drain")]
        assert len(cut) == 3
        charged = sum(line["input_tokens"] + line["output_tokens"] for line in cut)
        assert all(line["output_tokens"] > 0 for line in cut)  # the bytes it had seen
        assert await redis_spend(e2e_redis, config_dir) == charged
    finally:
        envoy.stop()
        sidecar.stop()


def test_sigterm_while_starting_up_stops_cleanly_before_serving(tmp_path: Path) -> None:
    """Waiting for a Kubernetes API that does not answer: SIGTERM stops it at once, exit 0,
    JSON lines only (nothing was admitted, so nothing is owed)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]\n"
    )
    argv = ["--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--lease-namespace", "default"]
    sidecar = Sidecar([], extra=argv, ready="/healthz")  # live, not ready: it is still listing
    try:
        assert status(f"http://127.0.0.1:{sidecar.admin_port}/readyz") == 503
        sidecar.popen.send_signal(signal.SIGTERM)
        assert sidecar.popen.wait(10) == 0
        assert all_json(sidecar) == []
        assert "stopped before serving" in [line.get("event") for line in sidecar.json_lines()]
    finally:
        sidecar.stop()


async def test_sigkill_during_a_drain_loses_none_of_the_spend_it_journalled(
    tmp_path: Path, config_dir: Path, upstream: MockOpenAI
) -> None:
    """Streams finish during the drain while Redis is hung, so their spend goes to the
    journal unconfirmed; the sidecar is SIGKILLed mid-drain (the grace period ran out, a
    node died). The next sidecar on that journal records each exactly once."""
    journal = tmp_path / "journal"
    own_redis = start_redis()
    extra = ["--journal-dir", str(journal), "--store-timeout-ms", "100", "--drain-delay-seconds", "0"]
    first = Sidecar([str(config_dir)], redis_url=own_redis.url, extra=[*extra, "--drain-seconds", "60"])
    second: Sidecar | None = None
    envoy = Envoy(upstream.port, [first.grpc_port])
    try:
        streams = await _streams(envoy, 3)
        first.popen.send_signal(signal.SIGTERM)
        os.kill(own_redis.popen.pid, signal.SIGSTOP)  # their records will time out
        responses = await asyncio.gather(*streams)
        assert [r.status for r in responses] == [200] * 3  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)  # recorded into the journal, unconfirmed
        assert first.alive()  # still draining: Redis has not confirmed them
        os.killpg(first.popen.pid, signal.SIGKILL)
        first.popen.wait(5)
        os.kill(own_redis.popen.pid, signal.SIGCONT)
        second = Sidecar([str(config_dir)], redis_url=own_redis.url, extra=extra)
        expected = 3 * 31
        deadline = time.monotonic() + 20
        while await redis_spend(own_redis.url, config_dir) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await redis_spend(own_redis.url, config_dir) == expected
        await asyncio.sleep(1.0)  # nothing arrives late to count twice
        assert await redis_spend(own_redis.url, config_dir) == expected
    finally:
        envoy.stop()
        if own_redis.popen.poll() is None:
            os.kill(own_redis.popen.pid, signal.SIGCONT)
        first.stop()
        if second is not None:
            second.stop()
        own_redis.stop()


async def test_a_drain_waits_for_redis_to_confirm_journalled_spend_before_exiting(
    tmp_path: Path, config_dir: Path, upstream: MockOpenAI
) -> None:
    """The journal does not outlive the pod (an emptyDir): spend recorded while Redis was
    hung is sent again during the drain, and the sidecar exits 0 once Redis confirms it."""
    own_redis = start_redis()
    extra = ["--journal-dir", str(tmp_path / "journal"), "--store-timeout-ms", "100"]
    sidecar = Sidecar(
        [str(config_dir)], redis_url=own_redis.url, extra=[*extra, "--drain-delay-seconds", "0"]
    )
    envoy = Envoy(upstream.port, [sidecar.grpc_port])
    try:
        streams = await _streams(envoy, 2)
        sidecar.popen.send_signal(signal.SIGTERM)
        os.kill(own_redis.popen.pid, signal.SIGSTOP)
        await asyncio.gather(*streams)
        await asyncio.sleep(1.0)
        assert sidecar.alive()  # waiting for Redis, within the drain
        os.kill(own_redis.popen.pid, signal.SIGCONT)
        assert await asyncio.to_thread(sidecar.popen.wait, 30) == 0
        assert await redis_spend(own_redis.url, config_dir) == 2 * 31
        events = [line.get("event") for line in sidecar.json_lines()]
        assert "drain: waiting for Redis to confirm spend" in events
        assert "drain: Redis confirmed all spend" in events
        assert all_json(sidecar) == []
    finally:
        envoy.stop()
        if own_redis.popen.poll() is None:
            os.kill(own_redis.popen.pid, signal.SIGCONT)
        sidecar.stop()
        own_redis.stop()
