"""Spend storage: counters, trailing windows and holds behind one interface.

`open_store` picks the backend: in memory (the embedded default, one replica) or Redis
shared by all replicas, behind the failure mode (`FailoverStore`).
"""

from __future__ import annotations

from extproc.store.base import (
    AdmitResult,
    Counter,
    CounterState,
    LocalAdmission,
    SpendStore,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from extproc.store.failover import FailoverStore
from extproc.store.memory import MemoryStore
from extproc.store.redis import RedisStore
from extproc.store.windows import BUCKET_SECONDS, bucket_seconds_for

__all__ = [
    "BUCKET_SECONDS",
    "AdmitResult",
    "Counter",
    "CounterState",
    "FailoverStore",
    "LocalAdmission",
    "MemoryStore",
    "RedisStore",
    "SpendStore",
    "StoreOutcomeUnknown",
    "StoreUnavailable",
    "bucket_seconds_for",
    "open_store",
]


def open_store(redis_url: str | None, *, fail_open: bool = True, timeout_seconds: float = 0.1) -> SpendStore:
    """The store for a sidecar: no URL -> in memory; a URL -> Redis with the failure mode.

    `fail_open` is the policy's failureMode (Open: admit on the local view and replay the
    spend later; Closed: reject while Redis is unreachable). `timeout_seconds` bounds
    each Redis call: keep it well inside Envoy's ext_proc message_timeout (200 ms).
    """
    if redis_url is None:
        return MemoryStore()
    return FailoverStore(
        RedisStore(redis_url, timeout_seconds=timeout_seconds),
        fail_open=fail_open,
        local=MemoryStore(),
    )
