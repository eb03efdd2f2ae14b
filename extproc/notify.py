"""Threshold notifications: a budget entry and subject crossing 50%, 80%, 100% of its limit
is told to webhooks, once per crossing per window across every replica.

Never on a request's path: the budget gauges' background refresh reads every counter
anyway, and hands each reading to `Notifier.observe`; deliveries go through a queue and a
sender task. A crossing is claimed in the spend store (`claim_once`: Redis `SET NX PX`, so
of all replicas one sends it) for the entry's window, and may fire again after that: the
next window. A delivery is retried with backoff (1, 2, 4 s, jittered) on a connection error,
a timeout (5 s), a 5xx or a 429; a 3xx is not followed (a webhook URL that moved is a
configuration to fix, said once); other 4xx are given up at once. Each outcome is counted.

Bodies: generic JSON (`{"event": "budget.threshold", "budget_id", "subject", "threshold",
"utilization", "spend", "limit", "unit", "window", "action", "at"}`), signed when a key is
given: `X-Extproc-Signature: sha256=HEX` of `TIMESTAMP.BODY` with HMAC-SHA256, and
`X-Extproc-Timestamp: TIMESTAMP`; or Slack's incoming-webhook body (`{"text": ...}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from extproc.store import SpendStore, StoreUnavailable
from extproc.telemetry import log

DEFAULT_THRESHOLDS = (50, 80, 100)
_ATTEMPTS = 4
_TIMEOUT_SECONDS = 5.0
_QUEUE = 1000


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    # "json" (generic, signed with `key` when given) or "slack"
    kind: str = "json"
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Crossing:
    budget_id: str
    subject: str
    threshold: int
    utilization: float
    spend: str
    limit: str
    unit: str
    window: str
    action: str
    at: float

    def body(self) -> dict[str, Any]:
        return {"event": "budget.threshold", **dataclasses.asdict(self)}

    def text(self) -> str:
        state = "reached its limit" if self.threshold >= 100 else f"passed {self.threshold}% of its limit"
        who = "" if self.subject == "-" else f" for {self.subject}"
        return (
            f"Budget {self.budget_id}{who} {state}: {self.spend} of {self.limit} {self.unit}"
            f" this {self.window.lower()} ({self.utilization:.0%}; action {self.action})."
        )


class Notifier:
    def __init__(
        self,
        store: SpendStore,
        webhooks: Sequence[Webhook],
        *,
        thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
        registry: CollectorRegistry | None = None,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = _TIMEOUT_SECONDS,
    ) -> None:
        self.store = store
        self.webhooks = tuple(webhooks)
        self.thresholds = tuple(sorted(set(thresholds)))
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._queue: asyncio.Queue[Crossing] = asyncio.Queue(_QUEUE)
        self._sender: asyncio.Task[None] | None = None
        self._said_redirect: set[str] = set()
        self.deliveries = Counter(
            "extproc_notifications",
            "Threshold notifications by webhook kind and outcome (sent, retried, failed, dropped)",
            ["kind", "outcome"],
            registry=registry,
        )

    async def observe(self, reading: Crossing, window_seconds: int, thresholds: tuple[int, ...] = ()) -> None:
        """A reading (its `threshold` unset) at or above some thresholds (the entry's own,
        else the sidecar's): each one not yet claimed for this window is claimed (of all
        replicas one wins) and queued."""
        for threshold in thresholds or self.thresholds:
            if reading.utilization * 100 < threshold:
                break
            key = f"notify|{reading.budget_id}|{reading.subject}|{threshold}"
            try:
                if not await self.store.claim_once(key, window_seconds):
                    continue
            except StoreUnavailable:
                return  # the next refresh tries again; nothing was claimed
            try:
                self._queue.put_nowait(dataclasses.replace(reading, threshold=threshold))
            except asyncio.QueueFull:
                self.deliveries.labels("all", "dropped").inc()
                log.warning("notification queue full; a crossing was not sent", budget_id=reading.budget_id)
        self._start()

    def _start(self) -> None:
        if self._sender is None and self.webhooks:
            self._sender = asyncio.get_running_loop().create_task(self._send_forever())

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None

    async def drained(self) -> None:
        """Every queued crossing delivered or given up (tests)."""
        await self._queue.join()

    async def _send_forever(self) -> None:
        import aiohttp  # only when notifications are configured

        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                crossing = await self._queue.get()
                try:
                    await asyncio.gather(*(self._deliver(session, hook, crossing) for hook in self.webhooks))
                except Exception:  # one bad delivery never stops the sender
                    log.exception("notification delivery failed")
                finally:
                    self._queue.task_done()

    async def _deliver(self, session: Any, hook: Webhook, crossing: Crossing) -> None:
        import aiohttp

        body, headers = _payload(hook, crossing)
        for attempt in range(_ATTEMPTS):
            retry = False
            try:
                async with session.post(
                    hook.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    if 200 <= status < 300:
                        self.deliveries.labels(hook.kind, "sent").inc()
                        return
                    if 300 <= status < 400:
                        if hook.url not in self._said_redirect:
                            self._said_redirect.add(hook.url)
                            log.error(
                                "notification webhook redirects; not followed (fix the URL)",
                                url=_safe(hook.url),
                                status=status,
                                location=response.headers.get("location"),
                            )
                        break
                    retry = status >= 500 or status == 429
                    log.warning(
                        "notification webhook refused",
                        url=_safe(hook.url),
                        status=status,
                        attempt=attempt + 1,
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                retry = True
                log.warning(
                    "notification webhook unreachable",
                    url=_safe(hook.url),
                    error=type(exc).__name__,
                    attempt=attempt + 1,
                )
            if not retry or attempt == _ATTEMPTS - 1:
                break
            self.deliveries.labels(hook.kind, "retried").inc()
            await asyncio.sleep(self.backoff_seconds * 2**attempt * random.uniform(0.8, 1.2))
        self.deliveries.labels(hook.kind, "failed").inc()
        log.error(
            "notification not delivered",
            url=_safe(hook.url),
            budget_id=crossing.budget_id,
            threshold=crossing.threshold,
        )


def _payload(hook: Webhook, crossing: Crossing) -> tuple[bytes, dict[str, str]]:
    headers = {"content-type": "application/json", "user-agent": "extproc-budgets"}
    if hook.kind == "slack":
        return json.dumps({"text": crossing.text()}).encode(), headers
    body = json.dumps(crossing.body(), separators=(",", ":")).encode()
    if hook.key is not None:
        stamp = str(int(time.time()))
        digest = hmac.new(hook.key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["x-extproc-timestamp"] = stamp
        headers["x-extproc-signature"] = f"sha256={digest}"
    return body, headers


def _safe(url: str) -> str:
    """A URL without its path (Slack's carries the secret)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/..."
