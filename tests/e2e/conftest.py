"""The e2e world: a real redis-server, a mock OpenAI upstream, sidecars and real Envoys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.support.http import HttpClient, MockOpenAI
from tests.support.procs import ROOT, Envoy, Sidecar
from tests.support.redis_server import start_redis

EXAMPLES = str(ROOT / "examples")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def e2e_redis() -> Iterator[str]:
    proc = start_redis()
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[MockOpenAI]:
    mock = MockOpenAI()
    await mock.start()
    yield mock
    await mock.stop()


@pytest.fixture(scope="session")
def replicas(e2e_redis: str, upstream: MockOpenAI) -> Iterator[list[tuple[Sidecar, Envoy]]]:
    """Two sidecar replicas on one Redis, each behind its own Envoy."""
    pairs: list[tuple[Sidecar, Envoy]] = []
    try:
        for _ in range(2):
            sidecar = Sidecar([EXAMPLES], redis_url=e2e_redis)
            pairs.append((sidecar, Envoy(upstream.port, [sidecar.grpc_port])))
        yield pairs
    finally:
        for sidecar, envoy in pairs:
            envoy.stop()
            sidecar.stop()


@pytest.fixture()
def fresh_spend(e2e_redis: str) -> None:
    redis.Redis.from_url(e2e_redis).flushall()


@pytest.fixture()
async def client_a(replicas: list[tuple[Sidecar, Envoy]], fresh_spend: None) -> AsyncIterator[HttpClient]:
    client = HttpClient("127.0.0.1", replicas[0][1].port)
    yield client
    await client.close()


@pytest.fixture()
async def client_b(replicas: list[tuple[Sidecar, Envoy]], fresh_spend: None) -> AsyncIterator[HttpClient]:
    client = HttpClient("127.0.0.1", replicas[1][1].port)
    yield client
    await client.close()
