"""The admin server's access rules: health and metrics open, per-subject spend only to a
bearer token or, without one, to loopback peers."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from extproc.server.admin import AdminServer


async def _ready() -> tuple[bool, str]:
    return True, "ready"


async def _spend() -> list[dict[str, str | int]]:
    return [{"budget": "team-a", "spent": 7}]


def _route(token: str | None, path: str, *, authorization: bytes = b"", local: bool) -> int:
    admin = AdminServer(CollectorRegistry(), _ready, _spend, token=token)
    status, _, _ = asyncio.run(admin._route("GET", path, authorization, local=local))
    return status


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_health_and_metrics_are_open_to_any_peer(path: str) -> None:
    assert _route(None, path, local=False) == 200
    assert _route("s3cret", path, local=False) == 200


def test_without_a_token_spend_is_served_to_loopback_peers_only() -> None:
    assert _route(None, "/spend", local=True) == 200
    assert _route(None, "/spend", local=False) == 403


def test_with_a_token_spend_needs_it_from_every_peer() -> None:
    for local in (True, False):
        assert _route("s3cret", "/spend", local=local) == 401
        assert _route("s3cret", "/spend", authorization=b"Bearer wrong", local=local) == 401
        assert _route("s3cret", "/spend", authorization=b"Bearer s3cret", local=local) == 200


def test_a_real_loopback_connection_counts_as_local() -> None:
    async def fetch() -> bytes:
        admin = AdminServer(CollectorRegistry(), _ready, _spend)
        port = await admin.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /spend HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            return await reader.read()
        finally:
            await admin.stop()

    response = asyncio.run(fetch())
    assert response.startswith(b"HTTP/1.1 200 OK") and b"team-a" in response
