"""A Kubernetes API server for tests, speaking the real wire protocol.

No kube-apiserver installs on the test machines, and mocks that answer at the level of
client methods hide exactly the bugs a controller meets in a cluster: the content type a
PATCH is sent with, a watch that ends with a 410 ERROR event, bookmarks, a stream cut in
the middle of a line, a 403 on a cluster-wide list. `KubeApiServer` is an aiohttp.web
server that answers the URL layout, verbs, status codes and `Status` bodies of a real
kube-apiserver for a registry of resource types, so the code under test can run through
its real client library (kubernetes_asyncio) unchanged.

It runs on its own event loop in a daemon thread, so it serves while a test (sync, or
async on pytest-asyncio's loop) blocks or awaits. State lives under one lock; every
control method is thread-safe and wakes the watch streams with `call_soon_threadsafe`.
State survives `stop()`/`restart()` (as etcd outlives an API server), so a test can make
the API unreachable and bring it back on the same port.

Deliberate simplifications, each noted where it lives: strategic merge patch is JSON merge
patch (exact for ConfigMap, Lease and Namespace), server-side apply is create-or-merge,
deleting a namespace does not cascade, LIST is always served at the current revision.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from aiohttp import web

Obj = dict[str, Any]

MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's request body cap (3 MiB)
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_UNAUTHENTICATED_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})
_TRUE = frozenset({"1", "t", "T", "true", "True", "TRUE"})  # Go's strconv.ParseBool
_CRD_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_PATCH_TYPES_CRD = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)
_PATCH_TYPES_BUILTIN = (*_PATCH_TYPES_CRD, "application/strategic-merge-patch+json")
_BODY_TYPES = ("application/json", "application/yaml")
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


# --- resource types ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    """One registered resource. `builtin` types (core, coordination.k8s.io) behave as the
    compiled-in ones do: no `generation`, PUT without resourceVersion allowed, strategic
    merge patch accepted, and LIST items without apiVersion/kind. Everything else behaves
    as a custom resource."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    builtin: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`plural.group`, as the API server names a resource in its messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def base_path(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


class RecordedRequest(NamedTuple):
    """One request as the server saw it; a plain tuple (method, path, query, content type)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None


class KubeApiError(Exception):
    """An API error with the `Status` body the server answers it with."""

    def __init__(
        self, code: int, message: str, reason: str | None = None, details: Obj | None = None
    ) -> None:
        super().__init__(f"{code} {reason or _REASONS.get(code, '')}: {message}")
        self.code = code
        self.status = status_body(code, message, reason, details)


def status_body(code: int, message: str, reason: str | None = None, details: Obj | None = None) -> Obj:
    """A failure `Status` as kube-apiserver writes it (field order included)."""
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    body["reason"] = reason if reason is not None else _REASONS.get(code, "")
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(rt: ResourceType, name: str | None) -> Obj:
    details: Obj = {}
    if name:
        details["name"] = name
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural  # the API server puts the resource here, not the kind
    return details


def _not_found(rt: ResourceType, name: str) -> KubeApiError:
    return KubeApiError(404, f'{rt.qualified} "{name}" not found', details=_details(rt, name))


def _conflict(rt: ResourceType, name: str) -> KubeApiError:
    return KubeApiError(
        409,
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        details=_details(rt, name),
    )


def _no_such_resource() -> KubeApiError:
    return KubeApiError(404, "the server could not find the requested resource", details={})


# --- selectors and patches --------------------------------------------------------------


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses (`a in (x,y),b=c`)."""
    terms, depth, current = [], 0, []
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


_LABEL_TERM = re.compile(
    r"^(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?$"
)


def parse_label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """Equality (`k=v`, `k==v`, `k!=v`), set (`k in (a,b)`, `k notin (a)`) and existence
    (`k`, `!k`) terms, ANDed, as `metav1.LabelSelector` strings allow."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector):
        m = _LABEL_TERM.match(term)
        if m is None or (m["neg"] and (m["op"] or m["set"])):
            raise KubeApiError(400, f"unable to parse requirement: invalid label selector: {term!r}")
        key, op, value = m["key"], m["op"], m["value"]
        if op in ("=", "=="):
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif m["set"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            inside = m["set"] == "in"
            checks.append(lambda labels, k=key, vs=values, i=inside: (labels.get(k) in vs) == i)
        elif m["neg"]:
            checks.append(lambda labels, k=key: k not in labels)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels) for check in checks)


def parse_field_selector(selector: str) -> Callable[[Obj], bool]:
    """`metadata.name` and `metadata.namespace` with `=`, `==`, `!=`: all a custom
    resource supports; other fields are a 400, as on a real server."""
    checks: list[Callable[[Obj], bool]] = []
    for term in _split_terms(selector):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if m is None:
            raise KubeApiError(400, f"invalid selector: '{selector}'; can't understand '{term}'")
        path, op, value = m.groups()
        if path not in ("metadata.name", "metadata.namespace"):
            raise KubeApiError(400, f"field label not supported: {path}")
        attr = path.split(".")[1]
        equal = op != "!="
        checks.append(lambda obj, a=attr, v=value, e=equal: (obj["metadata"].get(a, "") == v) == e)
    return lambda obj: all(check(obj) for check in checks)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _PatchError(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _PatchError(f"JSON pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool = False) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit():
        raise _PatchError(f"invalid array index: {token!r}")
    index = int(token)
    if index > len(container) or (not for_add and index == len(container)):
        raise _PatchError(f"array index out of bounds: {index}")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    for token in tokens[:-1]:
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token)]
        else:
            raise _PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def _get(doc: Any, path: str) -> Any:
    for token in _pointer(path):
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token)]
        else:
            raise _PatchError(f"doc is missing path: {path}")
    return doc


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], for_add=True), value)
    else:
        raise _PatchError(f"doc is missing path: {path}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise _PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens)
    if isinstance(parent, dict) and tokens[-1] in parent:
        del parent[tokens[-1]]
    elif isinstance(parent, list):
        del parent[_index(parent, tokens[-1])]
    else:
        raise _PatchError(f"remove operation does not apply: doc is missing path: {path}")
    return doc


def json_patch(doc: Any, operations: list[Any]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(doc)
    for op in operations:
        if (
            not isinstance(op, dict)
            or not isinstance(op.get("op"), str)
            or not isinstance(op.get("path"), str)
        ):
            raise _PatchError(f"invalid operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = _add(_remove(doc, path), path, copy.deepcopy(op.get("value"))) if path else op.get("value")
        elif kind == "move":
            value = _get(doc, op.get("from", ""))
            doc = _add(_remove(doc, op.get("from", "")), path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""))))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise _PatchError(f"testing value {path} failed")
        else:
            raise _PatchError(f"Unexpected kind: {kind}")
    return doc


# --- watch plumbing ---------------------------------------------------------------------


class _Event(NamedTuple):
    rv: int
    type: str
    key: tuple[str, str]
    obj: Obj  # never mutated once recorded
    prev: Obj | None


@dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    labels: Callable[[dict[str, str]], bool]
    fields: Callable[[Obj], bool]
    wake: asyncio.Event
    cut: str | None = None  # "mid", "clean" or "abort", set by a control method
    done: bool = False

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels(meta.get("labels") or {}) and self.fields(obj)

    def translate(self, event: _Event) -> tuple[str, Obj] | None:
        """The event this watcher sees, as the watch cache reports it: an object moving
        into its selector is ADDED, one moving out DELETED (its previous state, stamped
        with the event's resourceVersion)."""
        if event.key != self.rt.key:
            return None
        now = self.matches(event.obj)
        if event.type in ("ADDED", "DELETED"):
            return (event.type, event.obj) if now else None
        before = self.matches(event.prev)
        if now:
            return ("MODIFIED" if before else "ADDED", event.obj)
        if not before or event.prev is None:
            return None
        gone = copy.deepcopy(event.prev)
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return ("DELETED", gone)


def _encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_bool(value: str | None) -> bool:
    return value is not None and value in _TRUE


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


# --- the server -------------------------------------------------------------------------


class KubeApiServer:
    """A kube-apiserver stand-in on 127.0.0.1, for tests (see the module docstring).

    Use as `with KubeApiServer() as kube:`, `start()`/`stop()`, or `serve_kube_api()` in a
    fixture. `port=0` picks a free port at the first start and keeps it for `restart()`.
    Clients authenticate with `Bearer <token>` (`write_kubeconfig()`); the test side drives
    state with `apply`, `delete`, `compact`, `cut_watches`, `forbid`, `fail_next` and reads
    it with `get`, `objects`, `requests`, `open_watches`, `resource_version`.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        token: str = "test-token",
        bookmark_interval: float = 1.0,
        history_limit: int = 10_000,
        user: str = "system:serviceaccount:extproc:extproc",
        require_namespaces: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.user = user
        self.require_namespaces = require_namespaces
        self.max_body_bytes = max_body_bytes
        self._port = port
        self._history_limit = history_limit
        self._lock = threading.RLock()
        self._control = threading.Lock()  # serialises start/stop
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._kinds: dict[tuple[str, str], ResourceType] = {}
        self._store: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._rv = 0
        self._compacted = 0
        self._history: deque[_Event] = deque()
        self._snapshots: OrderedDict[str, tuple[int, list[Obj]]] = OrderedDict()
        self._forbidden: set[tuple[str, str | None, str]] = set()
        self._failures: list[int] = []
        self._requests: list[RecordedRequest] = []
        self._watchers: set[_Watcher] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._register_defaults()
        self._create_default_namespaces()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> KubeApiServer:
        """Serve on the port (a free one the first time when 0). Idempotent."""
        with self._control:
            if self._thread is not None:
                return self
            ready = threading.Event()
            outcome: dict[str, Any] = {}
            thread = threading.Thread(target=self._run, args=(ready, outcome), name="kube-api", daemon=True)
            thread.start()
            if not ready.wait(10):
                raise RuntimeError("the Kubernetes API test server did not start in 10 s")
            if "error" in outcome:
                thread.join(5)
                raise outcome["error"]
            self._thread = thread
            return self

    def stop(self, *, graceful: bool = True) -> None:
        """Close the port and every connection. `graceful` ends watch streams with their
        last chunk (an API server shutting down); otherwise connections drop (a crash).
        Objects and resourceVersions survive, for `start()` again."""
        with self._control:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError("stop() called from the server's own thread")
            future = asyncio.run_coroutine_threadsafe(self._shutdown(graceful), loop)
            try:
                future.result(15)
            finally:
                with self._lock:
                    self._loop = None
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                self._thread = None

    def restart(self, *, graceful: bool = True) -> None:
        """Stop and start again on the same port."""
        self.stop(graceful=graceful)
        self.start()

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event, outcome: dict[str, Any]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:
                outcome["error"] = exc
                ready.set()
                return
            with self._lock:
                self._loop = loop
            ready.set()
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=1024**3)  # bodies are capped by hand (413)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its watch handler at once.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        assert server is not None and getattr(server, "sockets", None)
        self._port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self._runner = runner
        self._closing = False

    async def _shutdown(self, graceful: bool) -> None:
        self._closing = True
        with self._lock:
            for watcher in self._watchers:
                watcher.cut = "clean" if graceful else "abort"
                watcher.wake.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- kubeconfig -------------------------------------------------------------------------

    def kubeconfig(self, token: str | None = "test-token", namespace: str = "default") -> Obj:
        """A kubeconfig dict for this server (plain http, bearer token; no token when None)."""
        user: Obj = {"token": token} if token is not None else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-api-test", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-api-test", "user": user}],
            "contexts": [
                {
                    "name": "kube-api-test",
                    "context": {"cluster": "kube-api-test", "user": "kube-api-test", "namespace": namespace},
                }
            ],
            "current-context": "kube-api-test",
            "preferences": {},
        }

    def write_kubeconfig(
        self, path: str | Path, token: str | None = "test-token", namespace: str = "default"
    ) -> Path:
        """Write `kubeconfig()` as YAML, for `load_kube_config(config_file=path)`."""
        target = Path(path)
        target.write_text(yaml.safe_dump(self.kubeconfig(token, namespace), sort_keys=False))
        return target

    # -- registry ---------------------------------------------------------------------------

    def register(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        namespaced: bool = True,
        status_subresource: bool = True,
        *,
        builtin: bool = False,
    ) -> ResourceType:
        """Serve a resource type (a custom resource unless `builtin`)."""
        rt = ResourceType(group, version, plural, kind, namespaced, status_subresource, builtin)
        with self._lock:
            self._types[(group, version, plural)] = rt
            self._kinds[(rt.api_version, kind)] = rt
            self._store.setdefault(rt.key, {})
        return rt

    def resource_type(self, api_version: str, kind: str) -> ResourceType:
        with self._lock:
            try:
                return self._kinds[(api_version, kind)]
            except KeyError:
                raise KeyError(f"no resource registered for {api_version} {kind}") from None

    def _register_defaults(self) -> None:
        self.register("", "v1", "namespaces", "Namespace", namespaced=False, builtin=True)
        self.register("", "v1", "configmaps", "ConfigMap", status_subresource=False, builtin=True)
        self.register("coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False, builtin=True)
        budgets = "budgets.extproc.dev"
        self.register(budgets, "v1alpha1", "budgets", "Budget")
        self.register(budgets, "v1alpha1", "budgetpolicies", "BudgetPolicy")
        self.register(budgets, "v1alpha1", "budgetdimensions", "BudgetDimensions")
        self.register(budgets, "v1alpha1", "budgetnamespaces", "BudgetNamespaces", namespaced=False)
        solo = "enterpriseagentgateway.solo.io"
        self.register(solo, "v1alpha1", "enterpriseagentgatewaybudgets", "EnterpriseAgentgatewayBudget")
        self.register(solo, "v1alpha1", "enterpriseagentgatewaypolicies", "EnterpriseAgentgatewayPolicy")
        self.register(
            solo, "v1alpha1", "enterpriseagentgatewayparameters", "EnterpriseAgentgatewayParameters"
        )
        self.register("gateway.networking.k8s.io", "v1", "gateways", "Gateway")
        self.register("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")

    def _create_default_namespaces(self) -> None:
        for name in DEFAULT_NAMESPACES:
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # -- test controls ----------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current global revision (what a LIST reports)."""
        with self._lock:
            return str(self._rv)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    def apply(self, obj: Obj, *, with_status: bool = False) -> Obj:
        """Create or replace an object by apiVersion/kind/namespace/name, emitting ADDED or
        MODIFIED (nothing when unchanged). For a kind with a status subresource the given
        `status` is kept only `with_status`; otherwise the stored status stays. No size cap."""
        rt = self.resource_type(obj.get("apiVersion", ""), obj.get("kind", ""))
        body = copy.deepcopy(obj)
        meta = body.setdefault("metadata", {})
        namespace = (meta.get("namespace") or "default") if rt.namespaced else None
        for system in ("resourceVersion", "uid", "creationTimestamp", "generation"):
            meta.pop(system, None)
        with self._lock:
            old = self._store[rt.key].get((namespace or "", meta.get("name", "")))
            if old is None:
                return copy.deepcopy(self._create_locked(rt, namespace, body, with_status=with_status))
            return copy.deepcopy(self._update_locked(rt, old, body, main_with_status=with_status))

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, force: bool = False
    ) -> Obj | None:
        """Delete as a client would (finalizers only mark it terminating unless `force`).
        Returns the deleted or terminating object, None when there was none."""
        rt = self.resource_type(api_version, kind)
        ns = (namespace or "default") if rt.namespaced else ""
        with self._lock:
            if (ns, name) not in self._store[rt.key]:
                return None
            obj, _ = self._delete_locked(rt, ns, name, None, force=force)
            return copy.deepcopy(obj)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        rt = self.resource_type(api_version, kind)
        ns = (namespace or "default") if rt.namespaced else ""
        with self._lock:
            obj = self._store[rt.key].get((ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of a kind (in one namespace when given), in list order."""
        rt = self.resource_type(api_version, kind)
        with self._lock:
            return [copy.deepcopy(o) for o in self._list_locked(rt, namespace)]

    def compact(self) -> None:
        """Forget the event history (as etcd compaction does): a watch from any older
        resourceVersion gets a 410 ERROR event, and pending continue tokens expire."""
        with self._lock:
            self._compacted = self._rv
            self._history.clear()
            self._snapshots.clear()

    def cut_watches(self, mid_event: bool = True, *, wait: bool = True, timeout: float = 5.0) -> int:
        """Close every open watch stream. `mid_event` writes the first half of an event line
        (a pending event, else a bookmark) and drops the connection without the last chunk;
        otherwise the stream ends cleanly. Waits until they are closed; returns how many."""
        with self._lock:
            targets = list(self._watchers)
            for watcher in targets:
                watcher.cut = "mid" if mid_event else "clean"
            self._wake_locked()
        if wait and targets and threading.current_thread() is not self._thread:
            self.wait_for(lambda: all(w.done for w in targets), timeout)
        return len(targets)

    def forbid(
        self,
        plural: str,
        namespace: str | None = None,
        verbs: Iterable[str] = ("list", "watch"),
    ) -> None:
        """Answer 403 Forbidden for `verbs` on `plural` (or `plural/status`) in `namespace`;
        `namespace=None` is the cluster scope, i.e. cluster-wide lists and watches of a
        namespaced kind, which RBAC grants separately from namespaced ones."""
        with self._lock:
            self._forbidden.update((plural, namespace, verb) for verb in verbs)

    def allow(
        self,
        plural: str,
        namespace: str | None = None,
        verbs: Iterable[str] = ("list", "watch"),
    ) -> None:
        with self._lock:
            self._forbidden.difference_update((plural, namespace, verb) for verb in verbs)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next `n` authenticated API requests with `status` (and a Status body)."""
        with self._lock:
            self._failures.extend([status] * n)

    def reset(self) -> None:
        """Back to a fresh server (for a module-scoped fixture), keeping the revision
        counter monotonic: watch streams end cleanly, objects, history, rules, injected
        failures and recorded requests go, the default namespaces come back."""
        if self.running:
            self.cut_watches(mid_event=False)
        with self._lock:
            for objects in self._store.values():
                objects.clear()
            self._history.clear()
            self._snapshots.clear()
            self._forbidden.clear()
            self._failures.clear()
            self._requests.clear()
            self._create_default_namespaces()
            self._compacted = self._rv

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
        """Poll `predicate` until truthy (returned) or raise TimeoutError. Blocks: from an
        async test use `wait_for_async`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)

    async def wait_for_async(
        self, predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)

    # -- state (all *_locked methods run with self._lock held) -------------------------------

    def _wake_locked(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closing under us
                loop.call_soon_threadsafe(self._wake_watchers)

    def _wake_watchers(self) -> None:
        with self._lock:
            for watcher in self._watchers:
                watcher.wake.set()

    def _commit_locked(self, rt: ResourceType, event_type: str, obj: Obj, prev: Obj | None) -> Obj:
        """Assign the next revision, store (or drop) and record the event."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if event_type == "DELETED":
            self._store[rt.key].pop(key, None)
        else:
            self._store[rt.key][key] = obj
        self._history.append(_Event(self._rv, event_type, rt.key, obj, prev))
        while len(self._history) > self._history_limit:
            self._compacted = self._history.popleft().rv
        self._wake_locked()
        return obj

    def _list_locked(self, rt: ResourceType, namespace: str | None) -> list[Obj]:
        items = self._store[rt.key]
        keys = sorted(k for k in items if namespace is None or k[0] == namespace)
        return [items[k] for k in keys]

    def _check_kind(self, rt: ResourceType, obj: Obj) -> None:
        if not isinstance(obj.get("metadata", {}), dict):
            raise KubeApiError(400, "metadata must be an object")
        if rt.builtin:
            obj.setdefault("apiVersion", rt.api_version)
            obj.setdefault("kind", rt.kind)
        elif not obj.get("kind"):
            raise KubeApiError(400, f"Object 'Kind' is missing in '{json.dumps(obj)[:200]}'")
        if obj.get("apiVersion") != rt.api_version:
            raise KubeApiError(
                400,
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected "
                f"API version ({rt.api_version})",
            )
        if obj.get("kind") != rt.kind:
            raise KubeApiError(
                400, f"the kind in the data ({obj.get('kind')}) does not match the expected kind ({rt.kind})"
            )

    def _create_locked(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Obj,
        *,
        with_status: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        obj = copy.deepcopy(body)
        self._check_kind(rt, obj)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise KubeApiError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
            if self.require_namespaces and ("", namespace) not in self._store[("", "namespaces")]:
                raise KubeApiError(
                    404,
                    f'namespaces "{namespace}" not found',
                    details={"name": namespace, "kind": "namespaces"},
                )
        else:
            meta.pop("namespace", None)  # cleared silently for cluster-scoped kinds
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise KubeApiError(
                    422,
                    f'{rt.kind} "" is invalid: metadata.name: Required value: '
                    "name or generateName is required",
                    details={"group": rt.group, "kind": rt.kind, "causes": [{"field": "metadata.name"}]},
                )
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if meta.get("resourceVersion"):
            raise KubeApiError(500, "resourceVersion should not be set on objects to be created")
        if (namespace or "", meta["name"]) in self._store[rt.key]:
            raise KubeApiError(
                409,
                f'{rt.qualified} "{meta["name"]}" already exists',
                "AlreadyExists",
                _details(rt, meta["name"]),
            )
        for system in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(system, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if not rt.builtin:
            meta["generation"] = 1
        if rt.status_subresource and not with_status:
            obj.pop("status", None)  # create cannot set status
        self._defaults(rt, obj)
        if rt.key == ("", "namespaces") and not with_status:
            obj["status"] = {"phase": "Active"}
        if dry_run:
            return obj
        return self._commit_locked(rt, "ADDED", obj, None)

    def _update_locked(
        self,
        rt: ResourceType,
        old: Obj,
        new: Obj,
        *,
        status_only: bool = False,
        main_with_status: bool = False,
        require_rv: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        """Replace `old` by `new` with the API server's rules: resourceVersion precondition,
        status subresource split, system metadata kept, generation bumped on spec change,
        no write (and no event) when nothing changed."""
        name = old["metadata"]["name"]
        if not isinstance(new.get("metadata", {}), dict):
            raise KubeApiError(400, "metadata must be an object")
        new_meta = new.get("metadata") or {}
        rv = new_meta.get("resourceVersion")
        if rv:
            if rv != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, name)
        elif require_rv and not rt.builtin:
            raise KubeApiError(
                422,
                f'{rt.qualified} "{name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                "must be specified for an update",
                details={**_details(rt, name), "causes": [{"field": "metadata.resourceVersion"}]},
            )
        if status_only:
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = copy.deepcopy(new["status"])
            else:
                result.pop("status", None)
        else:
            result = copy.deepcopy(new)
            self._check_kind(rt, result)
            if rt.status_subresource and not main_with_status:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            meta = result.setdefault("metadata", {})
            for system in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "resourceVersion",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):
                if system in old["metadata"]:
                    meta[system] = old["metadata"][system]
                else:
                    meta.pop(system, None)
            self._defaults(rt, result)
            if not rt.builtin and self._spec(rt, result) != self._spec(rt, old):
                meta["generation"] = old["metadata"].get("generation", 0) + 1
        if result == old:
            return old
        if dry_run:
            return result
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self._commit_locked(rt, "DELETED", result, old)
            return result
        return self._commit_locked(rt, "MODIFIED", result, old)

    @staticmethod
    def _defaults(rt: ResourceType, obj: Obj) -> None:
        """What the API server adds to a Namespace (label and finalizer)."""
        if rt.key == ("", "namespaces"):
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})

    @staticmethod
    def _spec(rt: ResourceType, obj: Obj) -> Obj:
        skip = {"metadata", "status"} if rt.status_subresource else {"metadata"}
        return {k: v for k, v in obj.items() if k not in skip}

    def _delete_locked(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        preconditions: Obj | None,
        *,
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Returns (object, deleted now). Finalizers only mark it terminating."""
        old = self._store[rt.key].get((namespace, name))
        if old is None:
            raise _not_found(rt, name)
        for field_name, meta_key in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
            wanted = (preconditions or {}).get(field_name)
            if wanted and wanted != old["metadata"].get(meta_key):
                raise KubeApiError(
                    409,
                    f'Operation cannot be fulfilled on {rt.qualified} "{name}": Precondition failed: '
                    f"{field_name.replace('resourceVersion', 'ResourceVersion').replace('uid', 'UID')} "
                    f"in precondition: {wanted}, "
                    f"{field_name.replace('resourceVersion', 'ResourceVersion').replace('uid', 'UID')} "
                    f"in object meta: {old['metadata'].get(meta_key)}",
                    details=_details(rt, name),
                )
        if old["metadata"].get("finalizers") and not force:
            if old["metadata"].get("deletionTimestamp"):
                return old, False
            marked = copy.deepcopy(old)
            marked["metadata"]["deletionTimestamp"] = _now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if dry_run:
                return marked, False
            return self._commit_locked(rt, "MODIFIED", marked, old), False
        gone = copy.deepcopy(old)
        if dry_run:
            return gone, True
        return self._commit_locked(rt, "DELETED", gone, old), True

    # -- HTTP -------------------------------------------------------------------------------

    def _reply(self, body: Any, status: int = 200) -> web.Response:
        return web.Response(
            status=status,
            body=_encode(body),
            content_type="application/json",
            headers={"Audit-Id": str(uuid.uuid4()), "Cache-Control": "no-cache, private"},
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        query = dict(request.query)
        with self._lock:
            self._requests.append(
                RecordedRequest(request.method, path, query, request.headers.get("Content-Type"))
            )
        try:
            if path.rstrip("/") in _UNAUTHENTICATED_PATHS:  # clients ask for /version/ too
                if path.rstrip("/") == "/version":
                    return self._reply(
                        {
                            "major": "1",
                            "minor": "33",
                            "gitVersion": "v1.33.0-kube-api-test",
                            "gitCommit": "0" * 40,
                            "gitTreeState": "clean",
                            "buildDate": "2025-04-23T00:00:00Z",
                            "goVersion": "go1.24.2",
                            "compiler": "gc",
                            "platform": "linux/amd64",
                        }
                    )
                return web.Response(text="ok")
            if request.headers.get("Authorization", "") != f"Bearer {self.token}":
                raise KubeApiError(401, "Unauthorized")
            with self._lock:
                failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                raise KubeApiError(failure, f"injected failure ({failure})")
            return await self._route(request, path, query)
        except KubeApiError as error:
            response = self._reply(error.status, error.code)
            if error.code == 429:
                response.headers["Retry-After"] = "1"
            return response
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug here should read as a Status, not hang a client
            return self._reply(status_body(500, f"Internal error occurred: {exc!r}"), 500)

    def _discovery_group(self, group: str) -> Obj:
        versions = sorted({rt.version for rt in self._types.values() if rt.group == group})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _discovery(self, segments: list[str]) -> Obj | None:
        with self._lock:
            types = list(self._types.values())
            if segments == ["api"]:
                return {
                    "kind": "APIVersions",
                    "versions": sorted({rt.version for rt in types if not rt.group}),
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self._port}"}
                    ],
                }
            if segments == ["apis"]:
                groups = sorted({rt.group for rt in types if rt.group})
                return {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._discovery_group(g) for g in groups],
                }
            if len(segments) == 2 and segments[0] == "apis":
                if not any(rt.group == segments[1] for rt in types):
                    return None
                return {"kind": "APIGroup", "apiVersion": "v1", **self._discovery_group(segments[1])}
            group, version = ("", segments[1]) if segments[0] == "api" else (segments[1], segments[2])
            resources: list[Obj] = []
            for rt in sorted(
                (t for t in types if t.group == group and t.version == version), key=lambda t: t.plural
            ):
                resources.append(
                    {
                        "name": rt.plural,
                        "singularName": rt.kind.lower(),
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": _CRD_VERBS,
                    }
                )
                if rt.status_subresource:
                    resources.append(
                        {
                            "name": f"{rt.plural}/status",
                            "singularName": "",
                            "namespaced": rt.namespaced,
                            "kind": rt.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
            if not resources:
                return None
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources,
            }

    def _resolve(self, segments: list[str]) -> tuple[ResourceType, str | None, str | None, str | None]:
        """(type, namespace, name, subresource) from a path under /api/V or /apis/G/V.
        `/api/v1/namespaces/NS/configmaps` is a namespaced collection; `/api/v1/namespaces/NS`
        a Namespace."""
        if segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        else:
            group, version, rest = segments[1], segments[2], segments[3:]
        with self._lock:
            types = self._types
            if rest[0] == "namespaces" and len(rest) >= 3:
                rt = types.get((group, version, rest[2]))
                if rt is not None and rt.namespaced:
                    if len(rest) > 5:
                        raise _no_such_resource()
                    name = rest[3] if len(rest) > 3 else None
                    sub = rest[4] if len(rest) > 4 else None
                    return self._checked_sub(rt, sub), rest[1], name, sub
            rt = types.get((group, version, rest[0]))
        if rt is None or len(rest) > 3 or (rt.namespaced and len(rest) > 1):
            raise _no_such_resource()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return self._checked_sub(rt, sub), None, name, sub

    @staticmethod
    def _checked_sub(rt: ResourceType, sub: str | None) -> ResourceType:
        if sub is not None and (sub != "status" or not rt.status_subresource):
            raise _no_such_resource()
        return rt

    def _authorize(
        self, rt: ResourceType, verb: str, namespace: str | None, name: str | None, sub: str | None
    ) -> None:
        resource = f"{rt.plural}/{sub}" if sub else rt.plural
        with self._lock:
            denied = (resource, namespace, verb) in self._forbidden
        if not denied:
            return
        who = f'{rt.qualified} "{name}"' if name else rt.qualified
        scope = f'in the namespace "{namespace}"' if namespace is not None else "at the cluster scope"
        raise KubeApiError(
            403,
            f'{who} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
            f'in API group "{rt.group}" {scope}',
            details=_details(rt, name),
        )

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, or 413 past the cap. The whole body is read first, so the client sees
        the 413 rather than a reset connection."""
        data = bytearray()
        too_large = False
        async for chunk in request.content.iter_chunked(1 << 16):
            if not too_large:
                data += chunk
                too_large = len(data) > self.max_body_bytes
        if too_large:
            raise KubeApiError(413, f"Request entity too large: limit is {self.max_body_bytes}")
        return bytes(data)

    async def _decode_object(self, request: web.Request) -> Obj:
        media = _media_type(request.headers.get("Content-Type"))
        raw = await self._read_body(request)
        if media not in (*_BODY_TYPES, ""):
            raise KubeApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json, application/yaml, application/vnd.kubernetes.protobuf",
            )
        try:
            body = yaml.safe_load(raw) if media == "application/yaml" else json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise KubeApiError(400, f"error decoding request body: {exc}") from None
        if not isinstance(body, dict):
            raise KubeApiError(
                400,
                f"json: cannot unmarshal {type(body).__name__} into Go value of type "
                "map[string]interface {}",
            )
        return body

    async def _route(self, request: web.Request, path: str, query: dict[str, str]) -> web.StreamResponse:
        segments = [s for s in path.split("/") if s]
        if not segments or segments[0] not in ("api", "apis"):
            return web.Response(status=404, text="404 page not found\n")
        if len(segments) <= 3 - (segments[0] == "api"):
            if request.method != "GET":
                raise KubeApiError(405, "the server does not allow this method on the requested resource")
            document = self._discovery(segments)
            if document is None:
                raise _no_such_resource()
            return self._reply(document)
        rt, namespace, name, sub = self._resolve(segments)
        method = request.method
        dry_run = query.get("dryRun") == "All"
        if name is None:
            if method == "GET":
                watch = _parse_bool(query.get("watch"))
                self._authorize(rt, "watch" if watch else "list", namespace, None, None)
                if watch:
                    return await self._watch(request, rt, namespace, query)
                return self._reply(self._list(rt, namespace, query))
            if method == "POST" and (namespace is not None or not rt.namespaced):
                self._authorize(rt, "create", namespace, None, None)
                body = await self._decode_object(request)
                with self._lock:
                    created = self._create_locked(rt, namespace, body, dry_run=dry_run)
                return self._reply(created, 201)
            if method == "DELETE":
                self._authorize(rt, "deletecollection", namespace, None, None)
                return self._reply(self._delete_collection(rt, namespace, query, dry_run))
            raise KubeApiError(405, "the server does not allow this method on the requested resource")
        ns_key = namespace or ""
        if method == "GET":
            self._authorize(rt, "get", namespace, name, sub)
            with self._lock:
                obj = self._store[rt.key].get((ns_key, name))
            if obj is None:
                raise _not_found(rt, name)
            return self._reply(obj)
        if method == "PUT":
            self._authorize(rt, "update", namespace, name, sub)
            body = await self._decode_object(request)
            self._check_identity(rt, body, namespace, name)
            with self._lock:
                old = self._store[rt.key].get((ns_key, name))
                if old is None:
                    raise _not_found(rt, name)
                updated = self._update_locked(
                    rt, old, body, status_only=sub == "status", require_rv=True, dry_run=dry_run
                )
            return self._reply(updated)
        if method == "PATCH":
            self._authorize(rt, "patch", namespace, name, sub)
            return self._reply(await self._patch(request, rt, namespace, name, sub, query, dry_run))
        if method == "DELETE" and sub is None:
            self._authorize(rt, "delete", namespace, name, None)
            raw = await self._read_body(request)
            try:
                options = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise KubeApiError(400, "error decoding DeleteOptions") from None
            preconditions = options.get("preconditions") if isinstance(options, dict) else None
            with self._lock:
                obj, deleted = self._delete_locked(rt, ns_key, name, preconditions, dry_run=dry_run)
            if not deleted:
                return self._reply(obj)
            details = {**_details(rt, name), "uid": obj["metadata"]["uid"]}
            return self._reply(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            )
        raise KubeApiError(405, "the server does not allow this method on the requested resource")

    @staticmethod
    def _check_identity(rt: ResourceType, body: Obj, namespace: str | None, name: str) -> None:
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise KubeApiError(
                400, f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise KubeApiError(
                400, "the namespace of the provided object does not match the namespace sent on the request"
            )

    async def _patch(
        self,
        request: web.Request,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        sub: str | None,
        query: dict[str, str],
        dry_run: bool,
    ) -> Obj:
        media = _media_type(request.headers.get("Content-Type"))
        accepted = _PATCH_TYPES_BUILTIN if rt.builtin else _PATCH_TYPES_CRD
        raw = await self._read_body(request)
        if media not in accepted:
            raise KubeApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                + ", ".join(accepted),
            )
        try:
            patch = yaml.safe_load(raw) if media == "application/apply-patch+yaml" else json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise KubeApiError(400, f"error decoding patch: {exc}") from None
        if media == "application/json-patch+json" and not isinstance(patch, list):
            # kubernetes_asyncio sends this type for any dict body unless told otherwise
            kind = "object" if isinstance(patch, dict) else type(patch).__name__
            raise KubeApiError(400, f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
        if media != "application/json-patch+json" and not isinstance(patch, dict):
            raise KubeApiError(
                400, "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        ns_key = namespace or ""
        with self._lock:
            old = self._store[rt.key].get((ns_key, name))
            if media == "application/apply-patch+yaml":
                if not query.get("fieldManager"):
                    raise KubeApiError(
                        422,
                        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                        "is required for apply patch",
                    )
                self._check_identity(rt, patch, namespace, name)
                if old is None:
                    # server-side apply creates; approximated here without field ownership
                    patch.setdefault("metadata", {})["name"] = name
                    return self._create_locked(rt, namespace, patch, dry_run=dry_run)
            if old is None:
                raise _not_found(rt, name)
            try:
                if media == "application/json-patch+json":
                    patched = json_patch(old, patch)
                else:
                    # merge patch; strategic merge (builtins only) and apply are approximated by it
                    patched = merge_patch(old, patch)
            except _PatchError as exc:
                raise KubeApiError(422, str(exc)) from None
            if not isinstance(patched, dict):
                raise KubeApiError(422, "the patch does not produce an object")
            meta = patched.get("metadata") or {}
            if meta.get("name") != name or (rt.namespaced and meta.get("namespace") != namespace):
                raise KubeApiError(400, "metadata.name and metadata.namespace cannot be changed by a patch")
            return self._update_locked(rt, old, patched, status_only=sub == "status", dry_run=dry_run)

    def _list(self, rt: ResourceType, namespace: str | None, query: dict[str, str]) -> Obj:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise KubeApiError(400, f"invalid limit: {query.get('limit')!r}") from None
        token = query.get("continue")
        with self._lock:
            if token:
                snapshot_id, offset = self._decode_continue(token)
                if snapshot_id not in self._snapshots:
                    raise KubeApiError(
                        410,
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter.",
                        "Expired",
                    )
                rv, items = self._snapshots[snapshot_id]
            else:
                snapshot_id, offset, rv = uuid.uuid4().hex, 0, self._rv
                items = [
                    o
                    for o in self._list_locked(rt, namespace)
                    if labels(o["metadata"].get("labels") or {}) and fields(o)
                ]
            page = items[offset : offset + limit] if limit > 0 else items[offset:]
            metadata: Obj = {"resourceVersion": str(rv)}
            remaining = len(items) - offset - len(page)
            if limit > 0 and remaining > 0:
                self._snapshots[snapshot_id] = (rv, items)
                while len(self._snapshots) > 64:
                    self._snapshots.popitem(last=False)
                metadata["continue"] = self._encode_continue(snapshot_id, rv, offset + len(page), page[-1])
                metadata["remainingItemCount"] = remaining
        if rt.builtin:  # compiled-in types omit apiVersion/kind in list items
            page = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in page]
        return {"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": metadata, "items": page}

    @staticmethod
    def _encode_continue(snapshot_id: str, rv: int, offset: int, last: Obj) -> str:
        start = f"{last['metadata'].get('namespace', '')}/{last['metadata']['name']}\x00"
        body = {"v": "meta.k8s.io/v1", "rv": rv, "start": start, "id": snapshot_id, "offset": offset}
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, int]:
        try:
            body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            return str(body["id"]), int(body["offset"])
        except (ValueError, KeyError, TypeError):
            raise KubeApiError(400, f"continue key is not valid: {token!r}") from None

    def _delete_collection(
        self, rt: ResourceType, namespace: str | None, query: dict[str, str], dry_run: bool
    ) -> Obj:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        with self._lock:
            targets = [
                o
                for o in self._list_locked(rt, namespace)
                if labels(o["metadata"].get("labels") or {}) and fields(o)
            ]
            items = [
                self._delete_locked(
                    rt, o["metadata"].get("namespace", ""), o["metadata"]["name"], None, dry_run=dry_run
                )[0]
                for o in targets
            ]
            rv = str(self._rv)
        return {
            "apiVersion": rt.api_version,
            "kind": f"{rt.kind}List",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    # -- WATCH ------------------------------------------------------------------------------

    def _bookmark(self, rt: ResourceType, rv: int, initial_events_end: bool = False) -> Obj:
        metadata: Obj = {"resourceVersion": str(rv)}
        if rt.builtin:
            metadata["creationTimestamp"] = None
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata},
        }

    @staticmethod
    def _expired(requested: int, oldest: int) -> Obj:
        return {
            "type": "ERROR",
            "object": status_body(410, f"too old resource version: {requested} ({oldest})", "Expired"),
        }

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        """One watch stream: initial or replayed events, then live ones, bookmarks, until
        timeoutSeconds, the client leaving, or a control method cutting it."""
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        rv_param = query.get("resourceVersion", "")
        bookmarks = _parse_bool(query.get("allowWatchBookmarks"))
        send_initial = _parse_bool(query.get("sendInitialEvents"))
        try:
            start_rv = int(rv_param) if rv_param not in ("", "0") else None
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise KubeApiError(400, f"invalid watch parameters: {query!r}") from None
        loop = asyncio.get_running_loop()
        watcher = _Watcher(rt, namespace, labels, fields, asyncio.Event())
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
        )
        response.enable_chunked_encoding()
        with self._lock:
            initial: list[Obj] = []
            if start_rv is None or send_initial:
                initial = [o for o in self._list_locked(rt, namespace) if watcher.matches(o)]
                cursor = self._rv
            else:
                cursor = start_rv
            expired = start_rv is not None and not send_initial and start_rv < self._compacted
            oldest = self._compacted
            self._watchers.add(watcher)
        try:
            await response.prepare(request)
            if expired:
                await response.write(_encode(self._expired(cursor, oldest)))
                return response
            for obj in initial:
                await response.write(_encode({"type": "ADDED", "object": obj}))
            if send_initial and bookmarks:
                await response.write(_encode(self._bookmark(rt, cursor, initial_events_end=True)))
            deadline = loop.time() + timeout if timeout else None
            next_bookmark = loop.time() + self.bookmark_interval
            while not self._closing or watcher.cut:
                watcher.wake.clear()
                with self._lock:
                    cut = watcher.cut
                    if cursor < self._compacted:  # fell behind the history kept
                        lines = [_encode(self._expired(cursor, self._compacted))]
                        cut = cut or "error"
                    else:
                        seen = (watcher.translate(e) for e in self._events_after_locked(cursor))
                        lines = [_encode({"type": s[0], "object": s[1]}) for s in seen if s is not None]
                    cursor = max(cursor, self._rv)
                if cut == "error":
                    await response.write(lines[0])
                    return response
                if cut:
                    await self._cut(request, response, cut, lines, rt, cursor)
                    return response
                for line in lines:
                    await response.write(line)
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return response
                if bookmarks and now >= next_bookmark:
                    await response.write(_encode(self._bookmark(rt, cursor)))
                    next_bookmark = now + self.bookmark_interval
                transport = request.transport
                if transport is None or transport.is_closing():
                    return response
                wake_at = min(now + 0.5, next_bookmark if bookmarks else now + 0.5, deadline or now + 0.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), max(0.0, wake_at - loop.time()))
            return response
        finally:
            with self._lock:
                self._watchers.discard(watcher)
                watcher.done = True

    async def _cut(
        self,
        request: web.Request,
        response: web.StreamResponse,
        cut: str,
        lines: list[bytes],
        rt: ResourceType,
        rv: int,
    ) -> None:
        transport = request.transport
        if cut == "mid":
            line = lines[0] if lines else _encode(self._bookmark(rt, rv))
            await response.write(line[: len(line) // 2])
        if cut in ("mid", "abort") and transport is not None:
            # close() flushes what was written first; abort() drops it
            if cut == "mid":
                transport.close()
            else:
                transport.abort()
            # nothing more may go out, not even the last chunk
            response.force_close()

    def _events_after_locked(self, rv: int) -> Iterator[_Event]:
        history = self._history
        start = len(history)
        while start > 0 and history[start - 1].rv > rv:
            start -= 1
        for index in range(start, len(history)):
            yield history[index]


def serve_kube_api(**kwargs: Any) -> Iterator[KubeApiServer]:
    """A fixture body: `kube = pytest.fixture(scope="module")(serve_kube_api)`, or
    `yield from serve_kube_api(bookmark_interval=0.2)` inside one."""
    server = KubeApiServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "MAX_BODY_BYTES",
    "KubeApiError",
    "KubeApiServer",
    "RecordedRequest",
    "ResourceType",
    "json_patch",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
    "serve_kube_api",
    "status_body",
]
