"""The read-only admin HTTP endpoint: /metrics, /healthz, /readyz, /storez, /spend.

A few GET routes do not earn a web framework: this is a small HTTP/1.1 responder on
asyncio streams, one request per connection.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import urllib.parse
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from extproc.telemetry import log

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]
SpendReport = Callable[[], Awaitable[list[dict[str, str | int]]]]
# The spend page for a request's query parameters.
SpendPage = Callable[[dict[str, str]], Awaitable[bytes]]


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        spend: SpendReport | None = None,
        *,
        store: ReadyCheck | None = None,
        token: str | None = None,
        page: SpendPage | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.spend = spend
        self.page = page
        self.store = store
        # What per-subject data (/spend) needs: `Authorization: Bearer <token>`; without a
        # token it is served to loopback peers only.
        self._authorization = f"bearer {token}".encode() if token else None
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Binds the address; `reuse_port` only for pre-forked workers sharing it (without
        it, a second sidecar on a port in use fails to start instead of sharing it)."""
        self._server = await asyncio.start_server(self._handle, host, port, reuse_port=reuse_port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path, _, query = target.partition("?")
            status, ctype, body = await self._route(
                method, path, _authorization(head), local=_loopback(writer), query=query
            )
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("admin request failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        reason = {
            200: "OK",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _route(
        self, method: str, path: str, authorization: bytes = b"", *, local: bool = True, query: str = ""
    ) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ok, why = await self.ready()
            return (200 if ok else 503), "text/plain", (why + "\n").encode()
        if path == "/storez" and self.store is not None:
            ok, why = await self.store()
            return (200 if ok else 503), "text/plain", (why + "\n").encode()
        if (path == "/spend" and self.spend is not None) or (path == "/" and self.page is not None):
            if self._authorization is None and not local:
                return (
                    403,
                    "text/plain",
                    b"per-subject data: ask from localhost, or give --admin-token-file\n",
                )
            if self._authorization is not None and not hmac.compare_digest(
                authorization.lower(), self._authorization.lower()
            ):
                return 401, "text/plain", b"a bearer token is needed for per-subject data\n"
            if path == "/" and self.page is not None:
                params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
                return 200, "text/html; charset=utf-8", await self.page(params)
            assert self.spend is not None
            return 200, "application/json", json.dumps(await self.spend()).encode()
        return 404, "text/plain", b"not found\n"


def _loopback(writer: asyncio.StreamWriter) -> bool:
    peer = writer.get_extra_info("peername")
    try:
        address = ipaddress.ip_address(peer[0])
    except (TypeError, IndexError, ValueError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback


def _authorization(head: bytes) -> bytes:
    """The Authorization header's value (bytes, stripped), or b""."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            return value.strip()
    return b""
