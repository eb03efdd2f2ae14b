"""In-process spend storage: the embedded default (one replica, no Redis).

Same semantics as the Redis scripts, step for step (geometry check, purge expired
holds, age out buckets, decide, place holds), so the shared behaviour suite can run
against both. Every operation is amortised O(1) per counter: running totals for spend
and holds, buckets dropped lazily as the window slides, holds expired lazily from a
heap ordered by lease expiry. Only computing the reset walks the (at most n + 1)
buckets, and only when a counter is over its limit.

Not thread-safe: it belongs to one asyncio loop, and no method awaits while it
mutates, so concurrent admits on that loop are serialised for free.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field

from extproc.store import windows
from extproc.store.base import AdmitResult, Claim, Counter, CounterState, HeldAmount, RecordId

# Sweep every window for aged-out spend this often (in operations), so counters that
# are never touched again do not pin memory forever (Redis has key TTLs for that).
_SWEEP_EVERY = 4096


@dataclass(slots=True)
class _Window:
    """One counter's buckets and holds."""

    window_seconds: int
    bucket_seconds: int
    buckets: dict[int, int] = field(default_factory=dict)
    # Running sum of `buckets`, so admission never sums them.
    spend: int = 0
    # Lowest index that may hold a bucket; every bucket lies in [oldest, oldest + n].
    oldest: int | None = None
    # hold_id -> (amount, lease expiry ms)
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (expiry ms, hold_id), possibly stale: an entry counts only while `holds` agrees.
    expiries: list[tuple[int, str]] = field(default_factory=list)
    held: int = 0

    @property
    def n(self) -> int:
        return windows.buckets_per_window(self.window_seconds, self.bucket_seconds)

    def is_empty(self) -> bool:
        return self.spend == 0 and self.held == 0

    def refresh(self, now_ms: int) -> None:
        """Bring the window to `now_ms`: expired holds out, then aged buckets out."""
        self._purge_holds(now_ms)
        self._age_out(now_ms)

    def _purge_holds(self, now_ms: int) -> None:
        # A hold whose lease expires at or before now is gone (ZRANGEBYSCORE -inf now).
        while self.expiries and self.expiries[0][0] <= now_ms:
            expiry, hold_id = heapq.heappop(self.expiries)
            current = self.holds.get(hold_id)
            if current is not None and current[1] == expiry:
                del self.holds[hold_id]
                self.held -= current[0]
        self._drop_stale_expiries()

    def _drop_stale_expiries(self) -> None:
        # Released holds leave their heap entry behind; clear them off the top so the top
        # is always the earliest live lease (used for the reset when holds block).
        while self.expiries:
            expiry, hold_id = self.expiries[0]
            current = self.holds.get(hold_id)
            if current is not None and current[1] == expiry:
                return
            heapq.heappop(self.expiries)

    def _age_out(self, now_ms: int) -> None:
        if self.oldest is None:
            return
        live_from = windows.oldest_live_index(now_ms, self.window_seconds, self.bucket_seconds)
        if self.oldest >= live_from:
            return
        if self.oldest + self.n < live_from:
            # Idle longer than a whole window: everything aged out.
            self.buckets.clear()
            self.spend = 0
        else:
            for index in range(self.oldest, live_from):
                self.spend -= self.buckets.pop(index, 0)
        self.oldest = live_from
        if self.spend == 0:
            # Amounts are positive, so a zero total means no buckets: forget the origin
            # (the Redis script deletes the hash's bucket fields at this point).
            self.buckets.clear()
            self.oldest = None

    def add_spend(self, amount: int, now_ms: int) -> None:
        if amount <= 0:
            return
        index = windows.bucket_index(now_ms, self.bucket_seconds)
        if self.oldest is None:
            # c - n, not c: a slightly late record (another replica's clock, a replay)
            # still lands in its own bucket instead of being taken as aged out.
            self.oldest = index - self.n
        if index < self.oldest:
            # Older than the window already: it would not count anyway.
            return
        self.buckets[index] = self.buckets.get(index, 0) + amount
        self.spend += amount

    def place_hold(self, hold_id: str, amount: int, expiry_ms: int) -> None:
        if amount <= 0:
            return
        self.release_hold(hold_id)
        self.holds[hold_id] = (amount, expiry_ms)
        heapq.heappush(self.expiries, (expiry_ms, hold_id))
        self.held += amount

    def release_hold(self, hold_id: str) -> None:
        current = self.holds.pop(hold_id, None)
        if current is not None:
            self.held -= current[0]
            self._drop_stale_expiries()

    def credit(self, amount: int) -> None:
        """Takes `amount` off the spend, newest bucket first (the spend that would have
        stayed longest, as if its requests had not happened); never below zero."""
        for index in sorted(self.buckets, reverse=True):
            if amount <= 0:
                break
            taken = min(amount, self.buckets[index])
            self.buckets[index] -= taken
            self.spend -= taken
            amount -= taken
            if self.buckets[index] == 0:
                del self.buckets[index]
        if self.spend == 0:
            self.buckets.clear()
            self.oldest = None

    def live_buckets(self) -> Iterator[tuple[int, int]]:
        """(index, amount), oldest first; walks at most n + 1 indexes."""
        if self.oldest is None:
            return
        for index in range(self.oldest, self.oldest + self.n + 1):
            amount = self.buckets.get(index)
            if amount:
                yield index, amount

    def state(self, limit: int, now_ms: int) -> CounterState:
        reset = windows.reset_seconds(
            spend=self.spend,
            held=self.held,
            limit=limit,
            buckets=self.live_buckets(),
            earliest_hold_expiry_ms=self.expiries[0][0] if self.expiries else None,
            now_ms=now_ms,
            window_seconds=self.window_seconds,
            bucket_seconds=self.bucket_seconds,
        )
        return CounterState(
            spend=self.spend,
            held=self.held,
            over_limit=self.spend + self.held >= limit,
            reset_seconds=reset,
        )


def _geometry(counter: Counter) -> tuple[int, int]:
    return counter.window_seconds, counter.bucket_seconds


def _empty_state(counter: Counter, now_ms: int) -> CounterState:
    # A counter never seen (or fully aged out) is at zero; only a limit <= 0 is over.
    reset = windows.reset_seconds(
        spend=0,
        held=0,
        limit=counter.limit,
        buckets=(),
        earliest_hold_expiry_ms=None,
        now_ms=now_ms,
        window_seconds=counter.window_seconds,
        bucket_seconds=counter.bucket_seconds,
    )
    return CounterState(spend=0, held=0, over_limit=counter.limit <= 0, reset_seconds=reset)


class MemoryStore:
    """Spend, holds and windows in a dict, keyed by counter id."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        # claim_once's keys and when each claim ends (monotonic seconds).
        self._claims: dict[str, float] = {}
        self._latest_ms = 0
        self._ops = 0

    # -- the SpendStore protocol ------------------------------------------------------

    async def admit(
        self,
        claims: Sequence[Claim],
        hold_id: str,
        lease_seconds: int,
        now: float,
        *,
        fail_open: bool = False,
    ) -> AdmitResult:
        return self.admit_now(claims, hold_id, lease_seconds, now)

    async def record(
        self,
        claims: Sequence[Claim],
        hold_id: str,
        now: float,
        record_id: RecordId | None = None,
    ) -> None:
        # One process, answered at once: a record is never sent twice, so ids need no check.
        self.record_now(claims, hold_id, now)

    def record_soon(self, claims: Sequence[Claim], hold_id: str, now: float) -> Awaitable[None] | None:
        self.record_now(claims, hold_id, now)
        return None

    async def release(self, counters: Sequence[Counter], hold_id: str) -> None:
        for counter in counters:
            window = self._windows.get(counter.id)
            if window is not None:
                window.release_hold(hold_id)
                self._forget_if_empty(counter.id, window)

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[CounterState, ...]:
        now_ms = self._tick(now)
        return tuple(self._state(counter, now_ms) for counter in counters)

    async def holds(self, counter: Counter, now: float) -> list[HeldAmount]:
        now_ms = self._tick(now)
        window = self._windows.get(counter.id)
        if window is None:
            return []
        window.refresh(now_ms)
        return sorted(
            HeldAmount(hold_id, amount, expiry) for hold_id, (amount, expiry) in window.holds.items()
        )

    async def claim_once(self, key: str, ttl_seconds: int) -> bool:
        now = time.monotonic()
        if self._claims.get(key, 0.0) > now:
            return False
        if len(self._claims) > 100_000:  # bounded: expired claims go first
            self._claims = {k: t for k, t in self._claims.items() if t > now}
        self._claims[key] = now + ttl_seconds
        return True

    async def adjust(self, counter: Counter, credit: int | None, now: float) -> tuple[int, int]:
        now_ms = self._tick(now)
        window = self._window(counter, now_ms)
        before = window.spend
        window.credit(before if credit is None else credit)
        after = window.spend
        self._forget_if_empty(counter.id, window)
        return before, after

    async def counters_seen(self, prefix: str) -> list[str]:
        return sorted(
            counter_id
            for counter_id, window in self._windows.items()
            if counter_id.startswith(prefix) and not window.is_empty()
        )

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._windows.clear()

    # -- synchronous cores (no await inside: atomic on the event loop) ----------------

    def admit_now(self, claims: Sequence[Claim], hold_id: str, lease_seconds: int, now: float) -> AdmitResult:
        now_ms = self._tick(now)
        states = tuple(self._state(claim.counter, now_ms) for claim in claims)
        admitted = not any(c.counter.blocking and s.over_limit for c, s in zip(claims, states, strict=True))
        if admitted:
            expiry_ms = now_ms + lease_seconds * 1000
            for claim in claims:
                if claim.amount > 0:
                    self._window(claim.counter, now_ms).place_hold(hold_id, claim.amount, expiry_ms)
        return AdmitResult(admitted=admitted, states=states)

    def record_now(self, claims: Sequence[Claim], hold_id: str, now: float) -> None:
        now_ms = self._tick(now)
        for claim in claims:
            window = self._window(claim.counter, now_ms)
            window.add_spend(claim.amount, now_ms)
            window.release_hold(hold_id)
            self._forget_if_empty(claim.counter.id, window)

    # -- internals --------------------------------------------------------------------

    def _tick(self, now: float) -> int:
        now_ms = windows.to_millis(now)
        self._latest_ms = max(self._latest_ms, now_ms)
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self._sweep()
        return now_ms

    def _sweep(self) -> None:
        for counter_id, window in list(self._windows.items()):
            window.refresh(self._latest_ms)
            self._forget_if_empty(counter_id, window)

    def _window(self, counter: Counter, now_ms: int) -> _Window:
        """The counter's window, created if missing, refreshed to `now_ms`."""
        window = self._windows.get(counter.id)
        if window is None:
            window = self._windows[counter.id] = _Window(counter.window_seconds, counter.bucket_seconds)
        elif (window.window_seconds, window.bucket_seconds) != _geometry(counter):
            # The entry's window changed (a config reload): old bucket indexes mean nothing
            # at the new size, so spend starts afresh; holds carry over.
            window.window_seconds, window.bucket_seconds = counter.window_seconds, counter.bucket_seconds
            window.buckets.clear()
            window.spend = 0
            window.oldest = None
        window.refresh(now_ms)
        return window

    def _state(self, counter: Counter, now_ms: int) -> CounterState:
        if counter.id not in self._windows:
            return _empty_state(counter, now_ms)
        window = self._window(counter, now_ms)
        state = window.state(counter.limit, now_ms)
        self._forget_if_empty(counter.id, window)
        return state

    def _forget_if_empty(self, counter_id: str, window: _Window) -> None:
        if window.is_empty():
            self._windows.pop(counter_id, None)
