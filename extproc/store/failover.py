"""The failure mode (SPEC §4): what happens to admission and spend while Redis is down.

- admit: `Open` admits on this replica's local view: the spend each counter had when the
  primary last answered for it, plus what this replica spent and holds since; `Closed`
  raises StoreUnavailable (the caller answers 503). A caller that decides per request
  (per route policy) builds the store closed and calls `admit_locally` for open routes.
- record: spend is never dropped. If the primary provably did not apply it, it joins
  the pending spend and is replayed when the primary answers again; the local store
  counts it meanwhile so fail-open admission sees it.
- release: best effort; a hold the primary never hears about ends with its lease.

Replay is at most once per attempt. A record whose outcome is unknown (the script was
sent, then the deadline expired or the connection broke: StoreOutcomeUnknown) is not
queued: replaying it could double-count, and a double count turns into false 429s for
everyone on that budget, whereas a lost record under-counts one request. It is counted
in `uncertain_records` and logged with its amounts, so an operator can reconcile.

After a failure the primary is skipped for `retry_after_seconds`, so an outage costs
one deadline, not one per request; the replay task is what probes it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from extproc.store import windows
from extproc.store.base import (
    AdmitResult,
    Counter,
    CounterState,
    SpendStore,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from extproc.store.memory import MemoryStore

log = structlog.get_logger(__name__)

# How many counters' last-seen spend is kept for outages.
_LAST_SEEN_MAX = 100_000

# Pending spend replays in batches of at most this many counters (one script call each).
_REPLAY_BATCH = 64

# Pending spend is kept per (counter id, window, bucket, bucket index): an outage of any
# length costs memory in proportion to the counters and buckets it touched, not to the
# number of requests, and replay lands every amount in the bucket it was spent in.
_PendingKey = tuple[str, int, int, int]


@dataclass(slots=True)
class _Pending:
    counter: Counter
    amount: int


class FailoverStore:
    """A shared primary store with a local fallback and a replay queue."""

    def __init__(
        self,
        primary: SpendStore,
        *,
        fail_open: bool,
        local: MemoryStore,
        retry_after_seconds: float = 1.0,
        replay_interval_seconds: float = 1.0,
    ) -> None:
        self._primary = primary
        self._local = local
        self._fail_open = fail_open
        self._retry_after = retry_after_seconds
        self._replay_interval = replay_interval_seconds
        self._pending: dict[_PendingKey, _Pending] = {}
        self._uncertain = 0
        # Monotonic time before which the primary is not tried (0: try it).
        self._down_until = 0.0
        self._replay_lock = asyncio.Lock()
        self._replay_loop: asyncio.Task[None] | None = None
        self._replay_now: asyncio.Task[int] | None = None
        # Each counter's spend as the primary last reported it: what an outage starts from,
        # so a budget already spent stays blocked while Redis is away.
        self._last_seen: dict[str, int] = {}
        # Counters whose last-seen spend has been copied into the local view this outage.
        self._seeded: set[str] = set()

    # -- what operators and tests look at -----------------------------------------------

    @property
    def pending_records(self) -> int:
        """Spend waiting for replay, in (counter, bucket) entries."""
        return len(self._pending)

    @property
    def uncertain_records(self) -> int:
        """Records that may or may not have reached the primary; never replayed."""
        return self._uncertain

    @property
    def primary_down(self) -> bool:
        return time.monotonic() < self._down_until

    # -- the SpendStore protocol ------------------------------------------------------

    async def admit(
        self,
        counters: Sequence[Counter],
        holds: Sequence[int],
        hold_id: str,
        lease_seconds: int,
        now: float,
    ) -> AdmitResult:
        self._start_replay_loop()
        if not self.primary_down:
            try:
                result = await self._primary.admit(counters, holds, hold_id, lease_seconds, now)
            except StoreUnavailable:
                self._mark_down()
                if not self._fail_open:
                    raise
            else:
                self._primary_answered()
                self._remember(counters, result.states)
                return result
        elif not self._fail_open:
            raise StoreUnavailable("spend store unavailable (retrying shortly)")
        return self.admit_locally(counters, holds, hold_id, lease_seconds, now)

    def admit_locally(
        self,
        counters: Sequence[Counter],
        holds: Sequence[int],
        hold_id: str,
        lease_seconds: int,
        now: float,
    ) -> AdmitResult:
        """Admission on this replica's view alone, for a fail-open route while the primary is away."""
        for counter in counters:
            if counter.id not in self._seeded:
                self._seeded.add(counter.id)
                seen = self._last_seen.get(counter.id, 0)
                if seen > 0:
                    # Counted in the current bucket: it ages out late, never early.
                    self._local.record_now([counter], [seen], "", now)
        return self._local.admit_now(counters, holds, hold_id, lease_seconds, now)

    def _remember(self, counters: Sequence[Counter], states: Sequence[CounterState]) -> None:
        if len(self._last_seen) > _LAST_SEEN_MAX:
            self._last_seen.clear()  # bounded: an outage then starts from zero for some
        for counter, state in zip(counters, states, strict=True):
            self._last_seen[counter.id] = state.spend

    async def record(
        self, counters: Sequence[Counter], amounts: Sequence[int], hold_id: str, now: float
    ) -> None:
        self._start_replay_loop()
        if not self.primary_down:
            try:
                await self._primary.record(counters, amounts, hold_id, now)
            except StoreOutcomeUnknown as exc:
                self._mark_down()
                self._uncertain += 1
                log.warning(
                    "spend record outcome unknown",
                    counters=[c.id for c in counters],
                    amounts=list(amounts),
                    error=str(exc),
                )
            except StoreUnavailable:
                self._mark_down()
                self._queue(counters, amounts, now)
            else:
                # The admit may have been local (during an outage): drop that hold too.
                await self._local.release(counters, hold_id)
                self._primary_answered()
                for counter, amount in zip(counters, amounts, strict=True):
                    if counter.id in self._last_seen:
                        self._last_seen[counter.id] += amount
                return
        else:
            self._queue(counters, amounts, now)
        self._local.record_now(counters, amounts, hold_id, now)

    async def release(self, counters: Sequence[Counter], hold_id: str) -> None:
        await self._local.release(counters, hold_id)
        if self.primary_down:
            return
        try:
            await self._primary.release(counters, hold_id)
        except StoreUnavailable:
            # Harmless to lose: the hold's lease ends it.
            self._mark_down()

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[CounterState, ...]:
        # No local fallback: an operator asking for spend wants the shared truth or an
        # error, not a replica's partial view presented as if it were the truth.
        return await self._primary.read(counters, now)

    async def counters_seen(self, prefix: str) -> list[str]:
        return await self._primary.counters_seen(prefix)

    async def ping(self) -> bool:
        return await self._primary.ping()

    async def close(self) -> None:
        for task in (self._replay_loop, self._replay_now):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._replay_loop = self._replay_now = None
        await self._primary.close()
        await self._local.close()

    # -- replay -------------------------------------------------------------------------

    async def replay_pending(self) -> int:
        """Send pending spend to the primary; returns how many entries it confirmed.

        Tries the primary even while it is marked down (this is the probe). Stops at the
        first failure; an entry leaves the queue only once the primary confirmed it, or
        as uncertain if the outcome of its attempt is unknown.
        """
        if self._replay_lock.locked():
            return 0
        async with self._replay_lock:
            confirmed = 0
            while self._pending:
                batch = self._next_batch()
                counters = [self._pending[key].counter for key in batch]
                # Snapshot: records arriving while we await add to these same entries.
                sent = [self._pending[key].amount for key in batch]
                _, _, bucket_seconds, index = batch[0]
                try:
                    # Replayed at its bucket's start, so it ages out when it would have.
                    await self._primary.record(counters, sent, "", float(index * bucket_seconds))
                except StoreOutcomeUnknown as exc:
                    self._mark_down()
                    self._uncertain += len(batch)
                    self._subtract(batch, sent)
                    log.warning(
                        "spend replay outcome unknown",
                        counters=[c.id for c in counters],
                        amounts=sent,
                        error=str(exc),
                    )
                    break
                except StoreUnavailable:
                    self._mark_down()
                    break
                self._subtract(batch, sent)
                confirmed += len(batch)
                self._down_until = 0.0
            if confirmed:
                log.info("spend replayed", entries=confirmed, pending=len(self._pending))
            return confirmed

    def _queue(self, counters: Sequence[Counter], amounts: Sequence[int], now: float) -> None:
        now_ms = windows.to_millis(now)
        for counter, amount in zip(counters, amounts, strict=True):
            if amount <= 0:
                continue
            index = windows.bucket_index(now_ms, counter.bucket_seconds)
            key = (counter.id, counter.window_seconds, counter.bucket_seconds, index)
            entry = self._pending.get(key)
            if entry is None:
                self._pending[key] = _Pending(counter, amount)
            else:
                entry.counter = counter
                entry.amount += amount

    def _next_batch(self) -> list[_PendingKey]:
        """The oldest entry and up to _REPLAY_BATCH - 1 others of the same bucket time."""
        first = next(iter(self._pending))
        batch = [first]
        for key in self._pending:
            if len(batch) >= _REPLAY_BATCH:
                break
            if key is not first and key[2] * key[3] == first[2] * first[3]:
                batch.append(key)
        return batch

    def _subtract(self, batch: list[_PendingKey], sent: list[int]) -> None:
        for key, amount in zip(batch, sent, strict=True):
            entry = self._pending[key]
            entry.amount -= amount
            if entry.amount <= 0:
                del self._pending[key]

    def _start_replay_loop(self) -> None:
        # Started lazily, from inside the running loop the store is used on.
        if self._replay_loop is None:
            self._replay_loop = asyncio.get_running_loop().create_task(self._replay_forever())

    async def _replay_forever(self) -> None:
        while True:
            await asyncio.sleep(self._replay_interval)
            if self._pending:
                try:
                    await self.replay_pending()
                except Exception:  # keep replaying whatever one round hit
                    log.exception("spend replay failed")

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self._retry_after

    def _primary_answered(self) -> None:
        self._down_until = 0.0
        if self._seeded:
            # The outage is over: the shared store is the truth again (what was spent
            # meanwhile is in the replay queue), so the local view starts afresh.
            self._seeded.clear()
            self._local = MemoryStore()
        # The primary is back: replay now rather than at the next tick.
        idle = self._replay_now is None or self._replay_now.done()
        if self._pending and idle and not self._replay_lock.locked():
            self._replay_now = asyncio.get_running_loop().create_task(self.replay_pending())
