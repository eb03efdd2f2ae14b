"""Spend storage: counters, trailing windows and holds behind one interface.

`open_store` picks the backend: in memory (the embedded default, one replica) or Redis
shared by all replicas, behind the failure mode (`FailoverStore`).
"""

from __future__ import annotations

from extproc.store.base import (
    AdmitResult,
    Claim,
    Counter,
    CounterState,
    HeldAmount,
    RecordId,
    SpendStore,
    StoreErrorReply,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from extproc.store.connect import RedisAccess
from extproc.store.failover import FailoverStore
from extproc.store.journal import Journal, JournaledRecord, JournalLocked
from extproc.store.memory import MemoryStore
from extproc.store.redis import RedisStore
from extproc.store.windows import BUCKET_SECONDS, bucket_seconds_for

__all__ = [
    "BUCKET_SECONDS",
    "AdmitResult",
    "Claim",
    "Counter",
    "CounterState",
    "FailoverStore",
    "HeldAmount",
    "Journal",
    "JournalLocked",
    "JournaledRecord",
    "MemoryStore",
    "RecordId",
    "RedisAccess",
    "RedisStore",
    "SpendStore",
    "StoreErrorReply",
    "StoreOutcomeUnknown",
    "StoreUnavailable",
    "bucket_seconds_for",
    "open_store",
]


def open_store(
    redis_url: str | None,
    *,
    timeout_seconds: float = 0.1,
    journal_dir: str | None = None,
    journal_fsync: str = "everysec",
    journal_max_bytes: int = 256 * 1024 * 1024,
    access: RedisAccess | None = None,
) -> SpendStore:
    """The store for a sidecar: no URL -> in memory; a URL -> Redis with the failure mode.

    Each admission says its route's failure mode (Open: admit on the local view and replay
    the spend later; Closed: reject while Redis is unreachable). `timeout_seconds` bounds
    each Redis call: keep it well inside Envoy's ext_proc message_timeout (200 ms).
    `journal_dir` keeps spend not yet confirmed by Redis on disk, replayed after a restart
    (see `journal.Journal`); raises JournalLocked if another process uses it. `access`:
    TLS files and a password for the URL (see `connect`).
    """
    if redis_url is None:
        return MemoryStore()
    journal = recovered = None
    if journal_dir is not None:
        journal = Journal(journal_dir, fsync=journal_fsync, max_bytes=journal_max_bytes)
        recovered = journal.open()
    return FailoverStore(
        RedisStore(redis_url, timeout_seconds=timeout_seconds, access=access, server_clock=True),
        local=MemoryStore(),
        journal=journal,
        recovered=recovered or (),
    )
