"""The failure mode (SPEC §4): what happens to admission and spend while Redis is down.

- admit: the route's failure mode comes with each call. `Open` (`fail_open`) admits on
  this replica's local view: the spend each counter had when the primary last answered
  for it, plus what this replica spent and holds since; `Closed` raises StoreUnavailable
  (the caller answers 503).
- record: spend is never dropped and never counted twice. Each record gets an id
  (`RecordId`: this process's writer id and a sequence number), which the primary applies
  at most once. A record the primary did not confirm (not sent, or sent with no answer:
  StoreOutcomeUnknown) is kept and sent again, with the same id, until it is confirmed;
  the local store counts it meanwhile so fail-open admission sees it.
- With a `Journal`, every record is written to disk before it is sent and acknowledged
  once confirmed, so a sidecar that dies (SIGKILL, OOM, a node drain) replays what it had
  not confirmed when it starts again: `recovered` records join the replay queue.
- release: best effort; a hold the primary never hears about ends with its lease.

After a failure the primary is skipped for `retry_after_seconds`, so an outage costs
one deadline, not one per request; the replay task is what probes it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import secrets
import time
from collections.abc import Awaitable, Sequence

import structlog

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
from extproc.store.journal import Journal, JournaledRecord
from extproc.store.memory import MemoryStore

log = structlog.get_logger(__name__)

# How often a replica says it is alive, and how long one that stopped saying so still
# counts as sharing the budgets (a restarting pod comes back under another writer id).
_HEARTBEAT_SECONDS = 5.0
_REPLICA_HORIZON_SECONDS = 30.0

# How many counters' last-seen spend is kept for outages.
_LAST_SEEN_MAX = 100_000


class _OpenSeqs:
    """One writer's records sent (or queued) but not confirmed: the lowest is its low-water
    mark, the promise the store may forget every record below it."""

    def __init__(self, after: int) -> None:
        self._heap: list[int] = []
        self._closed: set[int] = set()
        # The low-water mark when nothing is open: the next seq this writer would use.
        self.after = after

    def add(self, seq: int) -> None:
        heapq.heappush(self._heap, seq)
        self.after = max(self.after, seq + 1)

    def close(self, seq: int) -> None:
        self._closed.add(seq)
        while self._heap and self._heap[0] in self._closed:
            self._closed.discard(heapq.heappop(self._heap))

    @property
    def low(self) -> int:
        return self._heap[0] if self._heap else self.after


class FailoverStore:
    """A shared primary store with a local fallback and a replay queue."""

    def __init__(
        self,
        primary: SpendStore,
        *,
        local: MemoryStore,
        retry_after_seconds: float = 1.0,
        replay_interval_seconds: float = 1.0,
        journal: Journal | None = None,
        recovered: Sequence[JournaledRecord] = (),
        writer: str | None = None,
    ) -> None:
        self._primary = primary
        self._local = local
        self._retry_after = retry_after_seconds
        self._replay_interval = replay_interval_seconds
        self._journal = journal
        # This process's records: a fresh writer id per run, so seqs never repeat.
        self.writer = writer or secrets.token_hex(8)
        self._seqs = itertools.count(1)
        self._open: dict[str, _OpenSeqs] = {self.writer: _OpenSeqs(1)}
        # Records to send again, oldest first (recovered ones, then this run's).
        self._pending: dict[tuple[str, int], JournaledRecord] = {}
        for record in recovered:
            self._open.setdefault(record.writer, _OpenSeqs(record.seq + 1)).add(record.seq)
            self._pending[record.key] = record
        self.recovered = len(recovered)
        # Replicas (writers) that said they were alive lately, this one included; kept as
        # last known while Redis is away.
        self.replicas = 1
        self._next_heartbeat = 0.0
        self._retried_unknown = 0
        self._error_replies = 0
        self._last_error_reply = ""
        self._confirmed_replays = 0
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
        with contextlib.suppress(RuntimeError):  # built inside the running loop: start now
            asyncio.get_running_loop()
            if self._journal is not None:
                self._journal.start()
            if self._pending:
                self._start_replay_loop()  # recovered records go without waiting for traffic

    # -- what operators and tests look at -----------------------------------------------

    @property
    def pending_records(self) -> int:
        """Records waiting to be sent again (not yet confirmed by the primary)."""
        return len(self._pending)

    @property
    def uncertain_records(self) -> int:
        """Records whose first send had an unknown outcome: sent again, applied once."""
        return self._retried_unknown

    def stats(self) -> dict[str, int]:
        """What /metrics reports about spend not yet confirmed (see telemetry.StoreStats)."""
        journal = self._journal.stats if self._journal is not None else None
        return {
            "pending_records": len(self._pending),
            "retried_unknown_records": self._retried_unknown,
            "error_reply_records": self._error_replies,
            "replayed_records": self._confirmed_replays,
            "duplicate_records": int(getattr(self._primary, "duplicates", 0)),
            "script_calls": int(getattr(self._primary, "calls_sent", 0)),
            "round_trips": int(getattr(self._primary, "round_trips", 0)),
            "journal_unacknowledged": self._journal.unacknowledged if self._journal else 0,
            "journal_bytes": self._journal.size() if self._journal else 0,
            "journal_full_records": journal.full if journal else 0,
            "journal_bad_lines": journal.bad_lines if journal else 0,
            "journal_write_errors": journal.write_errors if journal else 0,
            "journal_recovered_records": self.recovered,
            "replicas": self.replicas,
            "reachable": 0 if self.primary_down else 1,
        }

    @property
    def primary_down(self) -> bool:
        return time.monotonic() < self._down_until

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
        self._start_replay_loop()
        if not self.primary_down:
            try:
                result = await self._primary.admit(claims, hold_id, lease_seconds, now)
            except StoreUnavailable:
                self._mark_down()
                if not fail_open:
                    raise
            else:
                self._primary_answered()
                self._remember(claims, result.states)
                return result
        elif not fail_open:
            raise StoreUnavailable("spend store unavailable (retrying shortly)")
        return self._admit_locally(claims, hold_id, lease_seconds, now)

    def _admit_locally(
        self, claims: Sequence[Claim], hold_id: str, lease_seconds: int, now: float
    ) -> AdmitResult:
        """Admission on this replica's view alone, for a fail-open route while the primary is away."""
        for claim in claims:
            counter = claim.counter
            if counter.id not in self._seeded:
                self._seeded.add(counter.id)
                used = self._outage_start(counter)
                if used > 0:
                    # Counted in the current bucket: it ages out late, never early.
                    self._local.record_now([Claim(counter, used)], "", now)
        result = self._local.admit_now(claims, hold_id, lease_seconds, now)
        return AdmitResult(result.admitted, result.states, local=True)

    def _outage_start(self, counter: Counter) -> int:
        """What a counter's local view starts an outage from.

        The spend Redis last reported; for a blocking counter shared by `replicas` replicas,
        also the other replicas' shares of what remained, so that this replica spends at
        most its own: together they stay within the limit plus one request each (the one
        that crosses each share). A counter never seen counts as unspent.
        """
        seen = self._last_seen.get(counter.id, 0)
        if not counter.blocking or self.replicas <= 1:
            return seen
        remaining = max(counter.limit - seen, 0)
        return counter.limit - remaining // self.replicas

    def _remember(self, claims: Sequence[Claim], states: Sequence[CounterState]) -> None:
        if len(self._last_seen) > _LAST_SEEN_MAX:
            self._last_seen.clear()  # bounded: an outage then starts from zero for some
        for claim, state in zip(claims, states, strict=True):
            self._last_seen[claim.counter.id] = state.spend

    async def record(
        self,
        claims: Sequence[Claim],
        hold_id: str,
        now: float,
        record_id: RecordId | None = None,
    ) -> None:
        sending = self.record_soon(claims, hold_id, now)
        if sending is not None:
            await sending

    def record_soon(self, claims: Sequence[Claim], hold_id: str, now: float) -> Awaitable[None] | None:
        """Journals the record now (its id taken, its line written); sending it is what is
        left to await."""
        self._start_replay_loop()
        counters = [claim.counter for claim in claims]
        if all(claim.amount <= 0 for claim in claims):
            return self._release_unspent(counters, hold_id, now)
        record = JournaledRecord(self.writer, next(self._seqs), now, tuple(claims))
        self._open[self.writer].add(record.seq)
        journaled = self._journal is not None and self._journal.append(record)
        return self._send(record, counters, hold_id, now, journaled)

    async def _send(
        self, record: JournaledRecord, counters: list[Counter], hold_id: str, now: float, journaled: bool
    ) -> None:
        claims = record.claims
        if journaled and self._journal is not None:
            await self._journal.synced()  # `always`: on disk before it counts anywhere
        if not self.primary_down:
            try:
                await self._primary.record(claims, hold_id, now, self._id(record))
            except StoreUnavailable as exc:
                self._mark_down()
                self._failed_record(record, exc)
            else:
                self._confirmed(record)
                # The admit may have been local (during an outage): drop that hold too.
                await self._local.release(counters, hold_id)
                self._primary_answered()
                for claim in claims:
                    if claim.counter.id in self._last_seen:
                        self._last_seen[claim.counter.id] += claim.amount
                return
        self._pending[record.key] = record
        self._local.record_now(claims, hold_id, now)

    async def _release_unspent(self, counters: Sequence[Counter], hold_id: str, now: float) -> None:
        """A record of nothing only releases holds: no id, no journal, best effort."""
        await self._local.release(counters, hold_id)
        if not self.primary_down:
            try:
                await self._primary.record([Claim(c, 0) for c in counters], hold_id, now)
            except StoreUnavailable:
                self._mark_down()

    def _failed_record(self, record: JournaledRecord, exc: StoreUnavailable) -> None:
        """Counts a record Redis did not confirm; it stays queued and goes again, same id."""
        if isinstance(exc, StoreErrorReply):
            # OOM, a wrong-type key, a script error: not passing by itself, so said loudly
            # (once per distinct error) and counted.
            self._error_replies += 1
            if str(exc) != self._last_error_reply:
                self._last_error_reply = str(exc)
                log.error(
                    "redis refused a spend record; keeping it to send again", seq=record.seq, error=str(exc)
                )
        elif isinstance(exc, StoreOutcomeUnknown):
            # Maybe applied: sent again with the same id, applied at most once.
            self._retried_unknown += 1
            log.info("spend record outcome unknown; will send again", seq=record.seq, error=str(exc))

    def _id(self, record: JournaledRecord) -> RecordId:
        return RecordId(record.writer, record.seq, self._open[record.writer].low)

    def _confirmed(self, record: JournaledRecord) -> None:
        self._open[record.writer].close(record.seq)
        self._pending.pop(record.key, None)
        if self._journal is not None:
            self._journal.ack(record)

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

    async def holds(self, counter: Counter, now: float) -> list[HeldAmount]:
        # The shared truth or an error, as `read`.
        return await self._primary.holds(counter, now)

    async def claim_once(self, key: str, ttl_seconds: int) -> bool:
        # Across replicas or not at all: a claim kept locally would send twice.
        return await self._primary.claim_once(key, ttl_seconds)

    async def adjust(self, counter: Counter, credit: int | None, now: float) -> tuple[int, int]:
        # An operator's change goes to the shared store or fails: never kept for later,
        # where it could land after spend it was meant to come before.
        return await self._primary.adjust(counter, credit, now)

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
        if self._journal is not None:
            await self._journal.close()

    async def flush(self, timeout: float) -> int:
        """Send what is pending until Redis has confirmed all of it or `timeout` passes (a
        drain: the journal may not outlive the pod); returns how many are left."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            if not await self.replay_pending():
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return len(self._pending)

    # -- replay -------------------------------------------------------------------------

    async def replay_pending(self) -> int:
        """Send pending records to the primary, oldest first; returns how many it confirmed.

        Tries the primary even while it is marked down (this is the probe). Stops at the
        first failure; a record leaves the queue only once the primary confirmed it. Each
        goes with its own id and its own time, so it lands in the bucket it was spent in
        and, if an earlier attempt did land, adds nothing.
        """
        if self._replay_lock.locked():
            return 0
        async with self._replay_lock:
            confirmed = 0
            for key in list(self._pending):
                record = self._pending.get(key)
                if record is None:
                    continue
                try:
                    await self._primary.record(record.claims, "", record.now, self._id(record))
                except StoreUnavailable as exc:
                    self._mark_down()
                    self._failed_record(record, exc)
                    break
                self._confirmed(record)
                confirmed += 1
                self._down_until = 0.0
            if confirmed:
                self._confirmed_replays += confirmed
                log.info("spend replayed", records=confirmed, pending=len(self._pending))
            return confirmed

    def _start_replay_loop(self) -> None:
        # Started lazily, from inside the running loop the store is used on.
        if self._replay_loop is None:
            self._replay_loop = asyncio.get_running_loop().create_task(self._replay_forever())

    async def _replay_forever(self) -> None:
        while True:
            await self.heartbeat()
            await asyncio.sleep(self._replay_interval)
            if self._pending:
                try:
                    await self.replay_pending()
                except Exception:  # keep replaying whatever one round hit
                    log.exception("spend replay failed")

    async def heartbeat(self) -> None:
        """Every few seconds while Redis answers: count the replicas alive lately."""
        beat = getattr(self._primary, "heartbeat", None)
        if beat is None or self.primary_down or time.monotonic() < self._next_heartbeat:
            return
        self._next_heartbeat = time.monotonic() + _HEARTBEAT_SECONDS
        with contextlib.suppress(StoreUnavailable):  # advisory: requests find outages themselves
            self.replicas = await beat(self.writer, time.time(), _REPLICA_HORIZON_SECONDS)

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
