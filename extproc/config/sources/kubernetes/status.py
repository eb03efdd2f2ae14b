"""What each policy and budget reports in `status`, and the writer that patches it.

Policies report as Gateway API policies do (GEP-713): `status.ancestors[]`, one
PolicyAncestorStatus per target, with our `controllerName` and the conditions `Accepted`
(reasons `Accepted`, `Invalid`, `TargetNotFound`, `Conflicted`) and `Attached` (the
field report's ATTACHED column). Budgets report `Accepted` (entry errors in its message)
and `Enforced` (False with reason `NotDiscovered` when no policy's discovery reaches
their namespace), as the commercial product does. Other controllers' ancestors are kept.

`desired_status` is pure; `StatusWriter` patches only what changed (JSON merge patch on
the status subresource), and only while this replica holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter, Gauge

from extproc.background import Background
from extproc.budgets import discovered
from extproc.config.model import Config, EnforcementPolicy
from extproc.config.sources.kubernetes.reflector import Reflector
from extproc.config.sources.kubernetes.source import BUDGET_KINDS, POLICY_KINDS, WATCHED, ObjectState
from extproc.telemetry import log

__all__ = ["CONTROLLER_NAME", "StatusMetrics", "StatusWriter", "desired_status"]

CONTROLLER_NAME = "budgets.extproc.dev/sidecar"
_GATEWAY_GROUP = "gateway.networking.k8s.io"
# metav1.Condition caps a message at 32768 characters.
_MAX_MESSAGE = 32_000
_MAX_ANCESTORS = 16
_PLURALS = {(c.api_version, c.kind): c for c in WATCHED}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class _Verdict:
    ok: bool
    reason: str
    message: str


def _condition(
    kind: str, verdict: _Verdict, generation: int, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    status = "True" if verdict.ok else "False"
    # lastTransitionTime moves only when the status does, as metav1.Condition defines it.
    same = previous is not None and previous.get("status") == status and previous.get("lastTransitionTime")
    return {
        "type": kind,
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message[:_MAX_MESSAGE],
        "observedGeneration": generation,
        "lastTransitionTime": previous["lastTransitionTime"] if same and previous else now,
    }


def _problems(state: ObjectState) -> str:
    text = "; ".join(f"{p.path}: {p.reason}" for p in state.problems)
    if state.stale:
        text += "; the last accepted version is still enforced"
    return text


def _by_type(conditions: Any) -> dict[str, Mapping[str, Any]]:
    if not isinstance(conditions, list):
        return {}
    return {str(c.get("type")): c for c in conditions if isinstance(c, Mapping)}


def desired_status(
    state: ObjectState,
    config: Config,
    targets: Mapping[str, set[tuple[str, str]] | None],
    now: str | None = None,
) -> dict[str, Any] | None:
    """The status an object should have, or None for kinds that report none."""
    now = now or _now()
    if state.kind in BUDGET_KINDS:
        return _budget_status(state, config, now)
    if state.kind in POLICY_KINDS:
        return _policy_status(state, config, targets, now)
    return None


def _budget_status(state: ObjectState, config: Config, now: str) -> dict[str, Any]:
    generation = int(state.meta.get("generation") or 0)
    previous = _by_type((state.obj.get("status") or {}).get("conditions"))
    if state.problems:
        accepted = _Verdict(False, "Invalid", _problems(state))
    else:
        entries = len(state.serving.budget.entries) if state.serving and state.serving.budget else 0
        accepted = _Verdict(True, "Accepted", f"{entries} {'entry' if entries == 1 else 'entries'} accepted")
    resource = state.serving.budget if state.serving else None
    if resource is None:
        enforced = _Verdict(False, "Invalid", "not enforced: no version of this budget was accepted")
    else:
        reaching = [p for p in config.policies if any(b is resource for b in discovered(p, config))]
        if reaching:
            names = ", ".join(f"{p.namespace}/{p.name}" for p in reaching)
            enforced = _Verdict(True, "Enforced", f"discovered by policy {names}")
        else:
            enforced = _Verdict(
                False, "NotDiscovered", f'no policy\'s discovery reaches namespace "{resource.namespace}"'
            )
    return {
        "conditions": [
            _condition("Accepted", accepted, generation, previous.get("Accepted"), now),
            _condition("Enforced", enforced, generation, previous.get("Enforced"), now),
        ]
    }


def _policy_status(
    state: ObjectState, config: Config, targets: Mapping[str, set[tuple[str, str]] | None], now: str
) -> dict[str, Any]:
    generation = int(state.meta.get("generation") or 0)
    namespace = str(state.meta.get("namespace") or "default")
    current = state.obj.get("status") or {}
    others = [
        a
        for a in current.get("ancestors") or []
        if isinstance(a, Mapping) and a.get("controllerName") != CONTROLLER_NAME
    ]
    previous = {
        _ref_key(a.get("ancestorRef") or {}): _by_type(a.get("conditions"))
        for a in current.get("ancestors") or []
        if isinstance(a, Mapping) and a.get("controllerName") == CONTROLLER_NAME
    }
    policy = state.serving.policy if state.serving else None
    if policy is not None:
        refs = [(ref.kind, ref.name) for ref in policy.target_refs]
    else:  # never accepted: report on the targets it names, as far as they can be read
        spec = state.obj.get("spec") or {}
        raw = spec.get("targetRefs") if isinstance(spec, Mapping) else None
        refs = [
            (str(r.get("kind") or ""), str(r.get("name") or ""))
            for r in (raw if isinstance(raw, list) else [])
            if isinstance(r, Mapping)
        ]
        if not refs:
            refs = [(state.kind, str(state.meta.get("name") or ""))]
    reaches = policy is not None and any(True for _ in discovered(policy, config))
    ours = []
    for kind, name in refs:
        ancestor_ref = {"group": _GATEWAY_GROUP, "kind": kind, "name": name, "namespace": namespace}
        found = targets.get(kind)
        conflict = _conflict(policy, kind, namespace, name, config) if policy is not None else None
        if policy is None:
            accepted = attached = _Verdict(False, "Invalid", _problems(state))
        elif found is not None and (namespace, name) not in found:
            accepted = attached = _Verdict(False, "TargetNotFound", f'{kind} "{namespace}/{name}" not found')
        else:
            if state.problems:
                accepted = _Verdict(False, "Invalid", _problems(state))
            elif conflict:
                accepted = _Verdict(False, "Conflicted", conflict)
            else:
                accepted = _Verdict(True, "Accepted", "Accepted")
            note = "" if reaches else "; its discovery reaches no budget"
            attached = _Verdict(True, "Attached", f"enforced on {kind} {namespace}/{name}{note}")
        before = previous.get(_ref_key(ancestor_ref), {})
        ours.append(
            {
                "ancestorRef": ancestor_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    _condition("Accepted", accepted, generation, before.get("Accepted"), now),
                    _condition("Attached", attached, generation, before.get("Attached"), now),
                ],
            }
        )
    # Gateway API caps ancestors at 16; ours come first, the other controllers' after.
    return {"ancestors": [*ours, *others][:_MAX_ANCESTORS]}


def _ref_key(ref: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(ref.get("kind") or ""), str(ref.get("namespace") or ""), str(ref.get("name") or ""))


def _conflict(policy: EnforcementPolicy, kind: str, namespace: str, name: str, config: Config) -> str | None:
    """A conflict on one target: an older policy on it says otherwise how its calls are read.

    Budgets of every policy on a route apply together; only the route settings (`provider`,
    `api`) can disagree, and then the oldest policy's win (GEP-713's conflict resolution).
    """
    for older in config.policies:
        if older is policy:
            return None
        if not any(r.kind == kind and r.namespace == namespace and r.name == name for r in older.target_refs):
            continue
        for setting in ("provider", "api"):
            mine, theirs = getattr(policy, setting), getattr(older, setting)
            if mine and theirs and mine != theirs:
                return (
                    f'{setting} "{mine}" conflicts with "{theirs}" of the older policy '
                    f"{older.namespace}/{older.name} on {kind} {namespace}/{name}; the older one applies"
                )
    return None


class StatusMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter(
            "extproc_kubernetes_status_writes",
            "Status patches sent, by result",
            ["result"],
            registry=registry,
        )
        self.leader = Gauge(
            "extproc_kubernetes_status_leader",
            "1 while this replica holds the status lease",
            registry=registry,
        )


class StatusWriter:
    """Patches the status of objects whose desired status differs from what they show.

    Runs only while `is_leader()`; every replica computes, one writes. A failed patch is
    counted and retried on the next round (after the next change, or every `resync`).
    """

    def __init__(
        self,
        api: client.ApiClient,
        metrics: StatusMetrics,
        is_leader: Callable[[], bool] = lambda: True,
        *,
        resync: float = 10.0,
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._metrics = metrics
        self._is_leader = is_leader
        self._resync = resync
        self._pending: list[tuple[ObjectState, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._loop = Background("status-writer", self._run)
        self._failing: set[str] = set()

    def offer(
        self, states: list[ObjectState], config: Config, targets: Mapping[str, Reflector | None]
    ) -> None:
        """The source's latest judgement: compute what every object should show."""
        found = {
            kind: (None if r is None else {(ns, name) for ns, name in r.objects})
            for kind, r in targets.items()
        }
        pending = []
        for state in states:
            desired = desired_status(state, config, found)
            if desired is not None and not _shows(state.obj.get("status"), desired):
                pending.append((state, desired))
        self._pending = pending
        self._wake.set()

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._resync)
            self._wake.clear()
            self._metrics.leader.set(1 if self._is_leader() else 0)
            if not self._is_leader():
                continue
            pending, self._pending = self._pending, []
            failed = []
            for state, desired in pending:
                if not await self._write(state, desired):
                    failed.append((state, desired))
            # Retried next round unless a newer judgement replaced them meanwhile.
            if failed and not self._pending:
                self._pending = failed

    async def _write(self, state: ObjectState, desired: dict[str, Any]) -> bool:
        collection = _PLURALS.get((str(state.obj.get("apiVersion")), state.kind))
        if collection is None:
            return True
        name = str(state.meta.get("name"))
        namespace = str(state.meta.get("namespace") or "default")
        try:
            await self._custom.patch_namespaced_custom_object_status(
                collection.group,
                collection.version,
                namespace,
                collection.plural,
                name,
                {"status": desired},
                # A dict body would go as JSON Patch, which the API server refuses for an object.
                _content_type="application/merge-patch+json",
                _request_timeout=10,
            )
        except client.ApiException as error:
            if error.status == 404:
                return True  # deleted meanwhile
            return self._failed(state, f"{error.status} {error.reason}")
        except Exception as error:  # unreachable: try again next round
            return self._failed(state, str(error) or type(error).__name__)
        self._metrics.writes.labels("ok").inc()
        self._failing.discard(state.label)
        return True

    def _failed(self, state: ObjectState, error: str) -> bool:
        self._metrics.writes.labels("error").inc()
        if state.label not in self._failing:
            self._failing.add(state.label)
            log.warning("status not written; retrying", object=state.label, error=error)
        return False


def _shows(current: Any, desired: Mapping[str, Any]) -> bool:
    """Whether the object's status already says what we would write (a write is then skipped)."""
    if not isinstance(current, Mapping):
        return False
    return all(current.get(key) == value for key, value in desired.items())
