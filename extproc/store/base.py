"""The one interface for spend storage.

A backend knows counters, buckets and holds; it never learns what Envoy, a budget
or a model is. Amounts are integers in the counter's own unit (nano-USD or tokens).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """The backend could not answer within its deadline."""


class StoreOutcomeUnknown(StoreUnavailable):
    """The request reached the backend but no answer came back: it may have been applied.

    Raised instead of plain StoreUnavailable when a write was sent and then the deadline
    expired or the connection broke. Replaying such a write could double-count it.
    """


class StoreErrorReply(StoreOutcomeUnknown):
    """Redis answered a script with an error (OOM, a wrong-type key, a script error).

    Part of the script may have run (a Lua error does not undo the writes before it), so
    it is an unknown outcome: a record is sent again with its id, and logged as an error,
    since unlike a timeout it will not go away by itself.
    """


@dataclass(frozen=True, slots=True)
class Counter:
    """One (budget entry, subject values) pair: a trailing window of spend."""

    # Stable identity: "namespace/resource/entry|key=value,..." (subject keys sorted).
    id: str
    window_seconds: int
    bucket_seconds: int
    limit: int
    # Only blocking counters can reject a request; the others are charged and reported.
    blocking: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """An amount against one counter, in its unit: a hold to place, or spend to record."""

    counter: Counter
    amount: int


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter as admission saw it, before this request's own hold."""

    spend: int
    held: int
    # spend + held >= limit
    over_limit: bool
    # Whole seconds until enough spend ages out to be back under the limit (0 if under).
    reset_seconds: int


@dataclass(frozen=True, slots=True, order=True)
class HeldAmount:
    """One hold in flight on a counter: a request admitted and not yet recorded."""

    hold_id: str
    amount: int
    # When its lease ends it, if its request never finishes (ms since the epoch).
    expiry_ms: int


@dataclass(frozen=True, slots=True)
class RecordId:
    """Makes a record idempotent: the store applies each (writer, seq) at most once.

    `writer` names one process's run (a random id, or the one a journaled record was
    written under); `seq` grows with each record it writes. `low` is the writer's promise
    that every record of it below `low` is confirmed and will never be sent again, which
    lets the store forget them: it keeps a high-water mark below `low` and the ids above.
    """

    writer: str
    seq: int
    low: int


@dataclass(frozen=True, slots=True)
class AdmitResult:
    admitted: bool
    # One state per claim's counter, in the order given.
    states: tuple[CounterState, ...]
    # Admitted on this replica's view alone: the shared store was away (failure mode Open).
    local: bool = False


class SpendStore(Protocol):
    async def admit(
        self,
        claims: Sequence[Claim],
        hold_id: str,
        lease_seconds: int,
        now: float,
        *,
        fail_open: bool = False,
    ) -> AdmitResult:
        """Reject if any blocking counter has spend + held >= limit; else hold each claim.

        One round trip for all counters. A rejected request places no hold. When the store
        cannot answer it raises StoreUnavailable, unless `fail_open` (the route's failure
        mode is Open) and it keeps a local view to admit on (`AdmitResult.local`).
        """
        ...

    async def record(
        self,
        claims: Sequence[Claim],
        hold_id: str,
        now: float,
        record_id: RecordId | None = None,
    ) -> None:
        """Add each claim to its counter's current bucket and release this request's holds.

        One round trip. With a `record_id` the record is applied at most once however often
        it is sent, so a record whose outcome is unknown can be sent again until confirmed;
        without one it must never be retried blindly (an increment applied twice double-counts).
        """
        ...

    def record_soon(self, claims: Sequence[Claim], hold_id: str, now: float) -> Awaitable[None] | None:
        """`record` in two halves, for a caller that answers its client in between: what can
        be done without waiting is done now (in memory: applied; with a journal: appended,
        so a process killed right after the reply still replays it), and what needs a round
        trip is returned to await, or None when nothing does."""
        ...

    async def release(self, counters: Sequence[Counter], hold_id: str) -> None:
        """Drop this request's holds without spending (the request ended without usage)."""
        ...

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[CounterState, ...]:
        """Current state of each counter, for `extproc spend` and the admin API."""
        ...

    async def counters_seen(self, prefix: str) -> list[str]:
        """Ids of counters with any spend whose id starts with `prefix` (for `"*"` subjects)."""
        ...

    async def holds(self, counter: Counter, now: float) -> list[HeldAmount]:
        """The live holds on a counter (the admin API's ListHolds)."""
        ...

    async def claim_once(self, key: str, ttl_seconds: int) -> bool:
        """True for the first caller of `key` (of every replica sharing the store) until
        `ttl_seconds` pass: what makes a notification go once per window."""
        ...

    async def adjust(self, counter: Counter, credit: int | None, now: float) -> tuple[int, int]:
        """Takes `credit` off the counter's spend, newest spend first and never below zero,
        or all of it (`None`: a reset); holds stay. Returns the spend before and after."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
