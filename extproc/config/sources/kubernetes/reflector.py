"""List and watch one collection of the Kubernetes API, keeping a current copy of its objects.

The informer pattern, written out because each Python client gets a part of it wrong
(see the README): list (paginated) to get every object and the collection's
resourceVersion; watch from that version, asking for bookmarks so that a quiet collection
still moves its version forward; on a watch that ends (the server's timeout, a cut
connection, a half-written event) watch again from the last version seen; on 410 Gone
(the version was compacted away) list again and replace the copy whole, which is the only
way to learn of deletions missed meanwhile; on any other error retry with capped,
jittered backoff. Requests go through kubernetes_asyncio's typed API methods with
`_preload_content=False`, so the lines of a watch are read as they arrive.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import aiohttp.http_exceptions
from kubernetes_asyncio import client

from extproc.background import Background
from extproc.telemetry import log

__all__ = ["ApiError", "Collection", "Reflector"]

_PAGE = 500
# The server ends each watch after about this long (the API server's own default is a
# random 30-60 min; shorter keeps a dead connection from lingering unnoticed).
_WATCH_SECONDS = 300
_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 10.0
# The longest an object may be, as the API server stores it (etcd's request limit is 1.5 MiB;
# a watch line holds one object): a longer line is refused rather than buffered.
_MAX_LINE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Collection:
    """One list/watch endpoint: a kind, optionally in one namespace or one named object."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    namespace: str | None = None  # None: every namespace (or a cluster-scoped kind)
    name: str | None = None  # watch one object by name (a ConfigMap a Parameters names)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        only = f" {self.name}" if self.name else ""
        return f"{self.plural}.{self.group or 'core'}{only}{where}"


class ApiError(Exception):
    """A Status the API server answered with (or 0 when it could not be reached)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}" if code else message)
        self.code = code
        self.reason = reason
        self.message = message


class _Cut(Exception):
    """A watch that ended inside an event."""


Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Reflector:
    """Keeps `objects` equal to the collection on the server, and calls `on_change` after
    each change it applies (on the event loop, with no argument: read `objects`).

    `synced` is set after the first complete list, or when the collection cannot be read
    at all for a reason retrying will not fix soon (403, 404): `problem` then says why,
    and the reflector keeps retrying slowly in case RBAC or the CRD arrives.
    """

    def __init__(
        self,
        api: client.ApiClient,
        collection: Collection,
        on_change: Callable[[], None],
        *,
        on_error: Callable[[Collection, str], None] | None = None,
        watch_seconds: int = _WATCH_SECONDS,
    ) -> None:
        self.collection = collection
        self.objects: dict[Key, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.problem: str | None = None  # the last error, until a list succeeds again
        self.relists = 0
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._on_change = on_change
        self._on_error = on_error or (lambda _collection, _reason: None)
        self._watch_seconds = watch_seconds
        self._loop = Background(f"reflector {collection}", self._run)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    # -- the loop -----------------------------------------------------------------

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST
        must_list = True
        while True:
            try:
                if must_list:
                    await self._list()
                    must_list = False
                    delay = _BACKOFF_FIRST
                await self._watch()
                delay = _BACKOFF_FIRST  # a watch that ended normally: go again at once
            except asyncio.CancelledError:
                raise
            except ApiError as error:
                if error.code == 410:
                    # Compacted: only a fresh list tells which objects were deleted meanwhile.
                    self.relists += 1
                    must_list = True
                    self._on_error(self.collection, "gone")
                    log.info("watch expired; listing again", collection=str(self.collection))
                    continue
                self._failed(error, "forbidden" if error.code == 403 else f"http_{error.code or 'error'}")
                if error.code in (403, 404):
                    # Nothing to wait for: say so (the source may be waiting on this one
                    # alone to apply its first configuration), and keep trying slowly.
                    if not self.synced.is_set():
                        self.synced.set()
                        self._on_change()
                    delay = _BACKOFF_MAX
            except _Cut as error:
                self._failed(error, "cut")
            except aiohttp.ClientPayloadError as error:  # the connection ended inside a chunk
                self._failed(error, "cut")
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                self._failed(error, "unreachable")
            except (ValueError, aiohttp.http_exceptions.HttpProcessingError) as error:
                # Not JSON, not an event, or a line over the reader's limit (LineTooLong).
                self._failed(error, "malformed")
                must_list = True  # a list is read whole: it gets past what the watch could not
            except Exception as error:  # whatever else: this loop must outlive it
                self._failed(error, "error")
                must_list = True
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, _BACKOFF_MAX)

    def _failed(self, error: Exception, reason: str) -> None:
        first = self.problem != str(error)
        self.problem = str(error)
        self._on_error(self.collection, reason)
        if first and reason == "http_404":
            # Most often a kind whose CRD this cluster does not have (the report's, Gateway API).
            log.info("kubernetes API does not serve this collection", collection=str(self.collection))
        elif first:  # one line per new problem, not one per retry
            log.warning(
                "kubernetes API request failed; retrying",
                collection=str(self.collection),
                reason=reason,
                error=str(error),
            )

    # -- list ---------------------------------------------------------------------

    async def _list(self) -> None:
        objects: dict[Key, dict[str, Any]] = {}
        token: str | None = None
        version: str | None = None
        while True:
            params: dict[str, Any] = {"limit": _PAGE}
            if token:
                params["_continue"] = token
            response = await self._request(params, timeout=30)
            try:
                page = _decode(await response.read())
            finally:
                response.close()
            for item in page.get("items") or ():
                if isinstance(item, dict):
                    # Items of a list carry no kind; the events of a watch do.
                    item.setdefault("apiVersion", self.collection.api_version)
                    item.setdefault("kind", self.collection.kind)
                    objects[object_key(item)] = item
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or "") or version
            token = meta.get("continue") or None
            if not token:
                break
        self.objects = objects
        self.resource_version = version
        self.problem = None
        self.synced.set()
        self._on_change()

    # -- watch --------------------------------------------------------------------

    async def _watch(self) -> None:
        params: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self._watch_seconds,
        }
        if self.resource_version:
            params["resource_version"] = self.resource_version
        # No read may stall longer than the server's own end of the watch plus slack.
        response = await self._request(params, timeout=self._watch_seconds + 30)
        # close(), not `async with` (release and wait): a watch left early has unread data.
        try:
            while True:
                line = await response.content.readline()
                if not line:
                    return  # the server ended the watch: resume from resource_version
                if len(line) > _MAX_LINE:
                    raise ValueError(f"a watch event of {len(line)} bytes is over {_MAX_LINE}")
                if not line.endswith(b"\n"):
                    # The connection ended inside an event: resume from the last whole one.
                    raise _Cut("the watch ended in the middle of an event")
                self._apply(_decode(line))
        finally:
            response.close()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict) or kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"):
            raise ValueError(f"not a watch event: {str(event)[:200]}")
        if kind == "ERROR":
            raise ApiError(
                int(obj.get("code") or 0), str(obj.get("reason") or ""), str(obj.get("message") or "")
            )
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if version:
                self.resource_version = str(version)
            return
        key = object_key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if version:
            self.resource_version = str(version)
        self._on_change()

    # -- requests -----------------------------------------------------------------

    async def _request(self, params: dict[str, Any], *, timeout: float) -> aiohttp.ClientResponse:
        c = self.collection
        if c.name:
            params["field_selector"] = f"metadata.name={c.name}"
        params["_preload_content"] = False
        params["_request_timeout"] = timeout
        if c.group:
            if c.namespace:
                call = self._custom.list_namespaced_custom_object(
                    c.group, c.version, c.namespace, c.plural, **params
                )
            else:
                call = self._custom.list_cluster_custom_object(c.group, c.version, c.plural, **params)
        elif c.plural == "namespaces":
            call = self._core.list_namespace(**params)
        elif c.namespace:
            call = self._core.list_namespaced_config_map(c.namespace, **params)
        else:
            call = self._core.list_config_map_for_all_namespaces(**params)
        response: aiohttp.ClientResponse = await call
        if not 200 <= response.status <= 299:
            try:
                raise _status_error(response.status, await response.read())
            finally:
                response.close()
        return response


def _decode(data: bytes) -> dict[str, Any]:
    # Decimal keeps an amount such as 0.1 exactly as written.
    value = json.loads(data, parse_float=Decimal)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _status_error(code: int, body: bytes) -> ApiError:
    try:
        status = json.loads(body)
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    message = str(status.get("message") or body[:200].decode("utf-8", "replace"))
    return ApiError(code, str(status.get("reason") or ""), message)
