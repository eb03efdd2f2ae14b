"""Spend shared by every replica in Redis: one Lua script call per operation.

Key layout, per counter (the id percent-quoted so that `{`, `}`, `%` or whitespace in a
subject value cannot break the hash tag)::

    {prefix}{<quoted id>}:b   hash  bucket index -> amount; t (spend total), o (lowest
                                    bucket index), h (held total), g ("window/bucket")
    {prefix}{<quoted id>}:h   zset  "hold_id:amount" -> lease expiry (ms)
    {prefix}{<quoted id>}:w   hash  writer -> high-water mark of its applied record seqs
    {prefix}{<quoted id>}:r   zset  "writer:seq" of applied records above that mark

All of a counter's keys share the hash tag `{<quoted id>}`, so in Redis Cluster a counter
lives in one slot. A record with a `RecordId` is applied at most once (see `record.lua`).
The scripts (`admit.lua`, `record.lua`, `release.lua`, each after the shared
`_window.lua`) keep the arithmetic of `windows.py`; see there for the model.

Failure handling is built for Envoy's 200 ms message timeout: one deadline
(`timeout_seconds`) covers connecting and the script, redis-py's retries are off (its
defaults are seconds long, and a retried increment double-counts), and every failure
is a `StoreUnavailable`. A failure after the script was sent is the subclass
`StoreOutcomeUnknown`: it may have been applied, so it is sent again only with its record id.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from extproc.store import windows
from extproc.store.base import (
    AdmitResult,
    Claim,
    Counter,
    CounterState,
    HeldAmount,
    RecordId,
    StoreErrorReply,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from extproc.store.connect import RedisAccess, redis_client

T = TypeVar("T")

# Characters left as they are in a quoted counter id: the ones ids are made of
# ("ns/resource/entry|key=value,...") and nothing that means something to Redis or to
# SCAN's glob ('*' is escaped separately when matching).
_ID_SAFE = "/|=,*:-_.@"

# Errors that mean "Redis did not answer": connection, protocol, timeouts.
_FAILURES = (RedisError, OSError, TimeoutError)

# Error replies Redis gives instead of running a script (a replica after a failover, a
# server still loading, another script running, a cluster redirect): nothing applied.
# OOM is not among them: a script can fail on memory after its first writes.
_REFUSALS = (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    ReadOnlyError,
    TryAgainError,
)


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, _REFUSALS):
        return True
    # "BUSY Redis is busy running a script": redis-py has no class for it.
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSY ")


def _script_text(name: str) -> str:
    package = resources.files("extproc.store")
    return package.joinpath("_window.lua").read_text() + "\n" + package.joinpath(name).read_text()


# The replicas seen lately: a zset of writer -> last heartbeat (ms); members older than
# the horizon go, and the key itself expires when every replica is gone.
_HEARTBEAT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class _PlacedHolds:
    """What this replica held, per hold_id and counter id, until recorded or expired.

    A hold's zset member is "hold_id:amount" (the amount in the member lets an expired
    hold be subtracted without another key); releasing it needs that exact member, and
    `record`/`release` are not told the amount, so the replica that placed it remembers.
    If that memory is lost (a restart), the lease still frees the hold.
    """

    def __init__(self) -> None:
        self._holds: dict[str, tuple[int, dict[str, int]]] = {}
        self._expiries: list[tuple[int, str]] = []

    def remember(self, hold_id: str, amounts: dict[str, int], expiry_ms: int) -> None:
        self._holds[hold_id] = (expiry_ms, amounts)
        heapq.heappush(self._expiries, (expiry_ms, hold_id))

    def amounts(self, hold_id: str) -> dict[str, int]:
        entry = self._holds.get(hold_id)
        return entry[1] if entry is not None else {}

    def forget(self, hold_id: str) -> None:
        self._holds.pop(hold_id, None)

    def expire(self, now_ms: int) -> None:
        # Past its lease the hold is purged by the scripts anyway; forget it so requests
        # that never recorded do not pin memory.
        while self._expiries and self._expiries[0][0] <= now_ms:
            expiry_ms, hold_id = heapq.heappop(self._expiries)
            entry = self._holds.get(hold_id)
            if entry is not None and entry[0] == expiry_ms:
                del self._holds[hold_id]

    def __len__(self) -> int:
        return len(self._holds)


class RedisStore:
    """The shared store: standalone Redis (one script call per operation)."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "extproc:",
        timeout_seconds: float = 0.1,
        access: RedisAccess | None = None,
        server_clock: bool = False,
    ) -> None:
        """`server_clock`: bucket indexes, hold leases and reset times from Redis's own
        clock (`TIME` in the scripts), not from the `now` each caller passes, so replicas
        whose clocks disagree still agree on every counter. The sidecar runs with it on;
        tests that place spend at a chosen time run without."""
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}': it would move the hash tag")
        self._prefix = key_prefix
        self._timeout = timeout_seconds
        self._server_clock = server_clock
        # Standalone, TLS, ACL, Sentinel or Cluster (see `connect`): one deadline.
        self._client: Any = redis_client(url, timeout_seconds, access)
        self._cluster = isinstance(self._client, redis.asyncio.RedisCluster)
        self._admit = self._client.register_script(_script_text("admit.lua"))
        self._record = self._client.register_script(_script_text("record.lua"))
        self._release = self._client.register_script(_script_text("release.lua"))
        self._adjust = self._client.register_script(_script_text("adjust.lua"))
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._placed = _PlacedHolds()
        # Counters on which a record id arrived again and added nothing (a retried record).
        self.duplicates = 0
        # Script calls made in one event-loop tick, sent together (standalone Redis).
        self._batch: list[_Call] = []
        # How many calls went in how many round trips (what coalescing saved).
        self.calls_sent = 0
        self.round_trips = 0

    # -- keys ---------------------------------------------------------------------------

    def keys_for(self, counter_id: str) -> tuple[str, str]:
        """(bucket hash, hold zset) of a counter."""
        tag = f"{self._prefix}{{{quote(counter_id, safe=_ID_SAFE)}}}"
        return f"{tag}:b", f"{tag}:h"

    def _keys(self, counters: Sequence[Counter]) -> list[str]:
        keys: list[str] = []
        for counter in counters:
            keys.extend(self.keys_for(counter.id))
        return keys

    def _record_keys(self, counters: Sequence[Counter]) -> list[str]:
        """Per counter: bucket hash, hold zset, then the writer hash and record zset that
        make a record idempotent."""
        keys: list[str] = []
        for counter in counters:
            bucket, hold = self.keys_for(counter.id)
            keys += [bucket, hold, f"{bucket[:-2]}:w", f"{bucket[:-2]}:r"]
        return keys

    def _clock(self, now_ms: int) -> str | int:
        return "" if self._server_clock else now_ms

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
        """One script per hash slot, the slots in parallel. Standalone Redis is one slot:
        the check and the holds are atomic. Across Cluster slots they are not: each slot
        checks and holds its own counters, and when any slot rejects, the holds the others
        placed are released again. A concurrent request may meanwhile see those holds and
        be rejected too (a false 429 for that moment, never an overshoot). Without a local
        view, `fail_open` changes nothing here: an unreachable Redis raises."""
        now_ms = windows.to_millis(now)
        lease_ms = lease_seconds * 1000
        self._placed.expire(now_ms)
        counters = [claim.counter for claim in claims]
        groups = self._groups(counters)
        replies = await self._each(
            [
                (
                    self._admit,
                    self._keys(_pick(counters, g)),
                    self._admit_args(_pick(claims, g), hold_id, now_ms, lease_ms),
                )
                for g in groups
            ]
        )
        admitted = all(int(reply[0]) == 1 for reply in replies)
        states: list[CounterState | None] = [None] * len(claims)
        for group, reply in zip(groups, replies, strict=True):
            for index, row in zip(group, reply[1:], strict=True):
                states[index] = _state(row)
        if not admitted and len(groups) > 1:
            # Undo the slots that did hold: nothing of a rejected request may stay held.
            undo = [
                (
                    self._release,
                    self._keys(_pick(counters, g)),
                    [hold_id, *(max(c.amount, 0) for c in _pick(claims, g))],
                )
                for g, reply in zip(groups, replies, strict=True)
                if int(reply[0]) == 1
            ]
            with contextlib.suppress(StoreUnavailable):  # failing that, the leases end them
                await self._each(undo)
        if admitted:
            placed = {c.counter.id: c.amount for c in claims if c.amount > 0}
            if placed:
                self._placed.remember(hold_id, placed, now_ms + lease_ms)
        return AdmitResult(admitted=admitted, states=tuple(s for s in states if s is not None))

    def _admit_args(
        self, claims: Sequence[Claim], hold_id: str, now_ms: int, lease_ms: int
    ) -> list[str | int]:
        args: list[str | int] = [self._clock(now_ms), hold_id, lease_ms]
        for claim in claims:
            counter = claim.counter
            args += [
                counter.window_seconds,
                counter.bucket_seconds,
                counter.limit,
                1 if counter.blocking else 0,
                max(claim.amount, 0),
            ]
        return args

    async def record(
        self,
        claims: Sequence[Claim],
        hold_id: str,
        now: float,
        record_id: RecordId | None = None,
    ) -> None:
        """One script per hash slot, in parallel, each with the same record id: if any slot
        fails, the record is sent again whole and the slots that had it add nothing."""
        held = self._placed.amounts(hold_id)
        if not held and all(claim.amount <= 0 for claim in claims):
            return  # nothing to add, nothing to release: no round trip
        ident: list[str | int] = (
            ["", 0, 0] if record_id is None else [record_id.writer, record_id.seq, record_id.low]
        )
        head: list[str | int] = [self._clock(windows.to_millis(now)), hold_id, *ident]
        counters = [claim.counter for claim in claims]
        calls = []
        for group in self._groups(counters):
            args = list(head)
            for claim in _pick(claims, group):
                counter = claim.counter
                args += [
                    counter.window_seconds,
                    counter.bucket_seconds,
                    max(claim.amount, 0),
                    held.get(counter.id, 0),
                ]
            calls.append((self._record, self._record_keys(_pick(counters, group)), args))
        replies = await self._each(calls)
        # Applied before (a retry of a record whose first answer was lost): counted once.
        self.duplicates += sum(int(reply[1]) for reply in replies)
        # Forgotten only once Redis confirmed: a failed record leaves the hold to its lease.
        self._placed.forget(hold_id)

    def record_soon(self, claims: Sequence[Claim], hold_id: str, now: float) -> Awaitable[None] | None:
        return self.record(claims, hold_id, now)

    async def release(self, counters: Sequence[Counter], hold_id: str) -> None:
        held = self._placed.amounts(hold_id)
        if not held:
            return
        await self._each(
            [
                (
                    self._release,
                    self._keys(_pick(counters, g)),
                    [hold_id, *(held.get(c.id, 0) for c in _pick(counters, g))],
                )
                for g in self._groups(counters)
            ]
        )
        self._placed.forget(hold_id)

    async def holds(self, counter: Counter, now: float) -> list[HeldAmount]:
        """The hold zset's live members ("hold_id:amount", scored by lease expiry)."""
        _, zkey = self.keys_for(counter.id)
        now_ms = await self._now_ms(now)
        members = await self._call(self._client.zrangebyscore(zkey, f"({now_ms}", "+inf", withscores=True))
        out = []
        for member, score in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            hold_id, _, amount = text.rpartition(":")
            if amount.isdigit():
                out.append(HeldAmount(hold_id, int(amount), int(score)))
        return sorted(out)

    async def claim_once(self, key: str, ttl_seconds: int) -> bool:
        claimed = await self._call(
            self._client.set(f"{self._prefix}{key}", "1", nx=True, ex=max(1, ttl_seconds))
        )
        return bool(claimed)

    async def adjust(self, counter: Counter, credit: int | None, now: float) -> tuple[int, int]:
        args: list[str | int] = [
            self._clock(windows.to_millis(now)),
            counter.window_seconds,
            counter.bucket_seconds,
            "" if credit is None else max(credit, 0),
        ]
        before, after = await self._run(self._adjust, list(self.keys_for(counter.id)), args)
        return int(before), int(after)

    async def _now_ms(self, now: float) -> int:
        """Redis's clock (with `server_clock`) or the caller's, in ms."""
        if not self._server_clock:
            return windows.to_millis(now)
        seconds, micros = await self._call(self._client.time())
        return int(seconds) * 1000 + int(micros) // 1000

    async def read(self, counters: Sequence[Counter], now: float) -> tuple[CounterState, ...]:
        # The admit script with nothing blocking and nothing held is a pure read (plus the
        # ageing any call does), so there is one copy of the state arithmetic.
        groups = self._groups(counters)
        calls = []
        for group in groups:
            args: list[str | int] = [self._clock(windows.to_millis(now)), "", 0]
            for counter in _pick(counters, group):
                args += [counter.window_seconds, counter.bucket_seconds, counter.limit, 0, 0]
            calls.append((self._admit, self._keys(_pick(counters, group)), args))
        states: list[CounterState | None] = [None] * len(counters)
        for group, reply in zip(groups, await self._each(calls), strict=True):
            for index, row in zip(group, reply[1:], strict=True):
                states[index] = _state(row)
        return tuple(s for s in states if s is not None)

    # -- hash slots ---------------------------------------------------------------------

    def _groups(self, counters: Sequence[Counter]) -> list[list[int]]:
        """Counter indexes grouped by hash slot (one group on standalone Redis)."""
        if not self._cluster:
            return [list(range(len(counters)))]
        by_slot: dict[int, list[int]] = {}
        for index, counter in enumerate(counters):
            bucket, _ = self.keys_for(counter.id)
            by_slot.setdefault(key_slot(bucket.encode()), []).append(index)
        return list(by_slot.values())

    async def _each(self, calls: list[tuple[AsyncScript, list[str], list[str | int]]]) -> list[Any]:
        """Runs the calls (one per slot) in parallel; the most telling failure wins."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [await self._run(script, keys, args)]
        results = await asyncio.gather(*(self._run(*call) for call in calls), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for kind in (StoreErrorReply, StoreOutcomeUnknown, StoreUnavailable):
                for failure in failures:
                    if isinstance(failure, kind):
                        raise failure
            raise failures[0]
        return list(results)

    async def counters_seen(self, prefix: str) -> list[str]:
        # A counter's hash exists exactly while it has spend or holds (the scripts delete
        # emptied fields, Redis drops an empty hash, and TTLs catch the idle ones).
        pattern = f"{_glob_escape(self._prefix)}{{{_glob_escape(quote(prefix, safe=_ID_SAFE))}*"
        start = len(self._prefix) + 1
        seen: set[str] = set()
        if self._cluster:  # every master's keys, through the cluster client
            keys = await self._call(_collect(self._client.scan_iter(match=pattern, count=1000)))
            return sorted({unquote(k[start:-3]) for k in map(_text, keys) if k.endswith("}:b")})
        cursor = 0
        while True:
            cursor, keys = await self._call(self._client.scan(cursor, match=pattern, count=1000))
            for raw in keys:
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if key.endswith("}:b"):
                    seen.add(unquote(key[start:-3]))
            if cursor == 0:
                return sorted(seen)

    async def heartbeat(self, writer: str, now: float, horizon_seconds: float) -> int:
        """Says this writer is alive and returns how many writers were in the last
        `horizon_seconds` (this one included): the replicas sharing what remains of a
        budget while Redis is away. Idempotent, so an ordinary call under the deadline."""
        now_ms = windows.to_millis(now)
        horizon_ms = int(horizon_seconds * 1000)
        key = f"{self._prefix}replicas"
        reply = await self._call(
            self._heartbeat(keys=[key], args=[now_ms, writer, now_ms - horizon_ms, horizon_ms])
        )
        return max(int(reply), 1)

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._client.aclose()

    # -- execution ----------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """An idempotent command (PING, SCAN) under the deadline."""
        try:
            return await asyncio.wait_for(awaitable, self._timeout)
        except _FAILURES as exc:
            raise StoreUnavailable(f"redis: {exc!r}") from exc

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """A script call, sent with the others made in the same event-loop tick: one
        connection, one write, the replies read in order (`_send`). Each call keeps its
        own outcome; the first of a tick schedules the send."""
        if self._cluster:
            return await self._run_on_cluster(script, keys, args)
        call = _Call(script, keys, args, asyncio.get_running_loop().create_future())
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(call)
        return await call.future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._send(batch))
        _SENDING.add(task)
        task.add_done_callback(_SENDING.discard)

    async def _send(self, batch: list[_Call]) -> None:
        """Send a tick's calls under one deadline, telling "not sent" from "maybe applied".

        Phase 1 takes a pooled connection and makes sure it is connected and healthy;
        a failure there (refused, unreachable, connect timeout) provably applied
        nothing: StoreUnavailable. Phase 2 sends the script; a failure after that may
        have been applied: StoreOutcomeUnknown, unless Redis answered with a refusal
        (READONLY, LOADING, BUSY, ...), which it gives instead of running it.
        redis-py's `Script.__call__` cannot tell these apart, hence the explicit
        connection.
        """
        pool = self._client.connection_pool
        deadline = asyncio.get_running_loop().time() + self._timeout
        conn: AbstractConnection | None = None
        succeeded = False
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await pool.get_connection()
                    # A pooled socket the server closed (restart, idle timeout) reads as
                    # ready: reconnect now, while a failure still means nothing was sent.
                    # (redis-py skips this check when maintenance notifications are "auto".)
                    if await conn.can_read():
                        await conn.disconnect()
                        await conn.connect()
                    await conn.check_health()
            except _FAILURES as exc:
                _fail(batch, StoreUnavailable(f"redis: {exc!r}"), exc)
                return
            try:
                async with asyncio.timeout_at(deadline):
                    await _evalsha_all(conn, batch)
            except _FAILURES as exc:
                _fail(batch, _after_sending(exc, "redis"), exc)
                return
            succeeded = True
            self.calls_sent += len(batch)
            self.round_trips += 1
        except BaseException as exc:  # cancelled: every caller hears of it
            _fail(batch, StoreOutcomeUnknown(f"redis: {exc!r}"), exc)
            raise
        finally:
            if conn is not None:
                if not succeeded:
                    # A half-read reply would poison the next command on this socket.
                    await conn.disconnect(nowait=True)
                await pool.release(conn)

    async def _run_on_cluster(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """One slot's script through the cluster client, which follows MOVED and ASK and
        finds a promoted replica. It may send a script again on a broken connection, which
        every script tolerates: records carry their id, holds and releases are set
        operations. So a failure here is "maybe applied", an answer with an error an
        error reply, and a cluster without a master for the slot a refusal."""
        try:
            return await asyncio.wait_for(script(keys=keys, args=args), self._timeout)
        except _FAILURES as exc:
            raise _after_sending(exc, "redis cluster") from exc


def _after_sending(exc: BaseException, where: str) -> StoreUnavailable:
    """What a failure once a script was sent means: a refusal (nothing ran), an error reply
    (part may have run, and it will not pass by itself), or no answer (maybe applied)."""
    if _refused(exc):
        return StoreUnavailable(f"{where} refused: {exc!r}")
    if isinstance(exc, ResponseError):
        return StoreErrorReply(f"{where} answered with an error: {exc}")
    return StoreOutcomeUnknown(f"{where}: {exc!r}")


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: list[str]
    args: list[str | int]
    future: asyncio.Future[Any]


# Sends in flight: a task must be referenced until it is done.
_SENDING: set[asyncio.Task[None]] = set()


def _fail(batch: list[_Call], error: StoreUnavailable, cause: BaseException) -> None:
    """Every call of `batch` not yet answered fails with `error`."""
    for call in batch:
        if not call.future.done():
            error_for_call = type(error)(str(error))
            error_for_call.__cause__ = cause
            call.future.set_exception(error_for_call)


async def _evalsha_all(conn: AbstractConnection, batch: list[_Call]) -> None:
    """The calls in one write, their replies read in order, each answered as it is read.
    An error reply answers its own call only; NOSCRIPT (a server that lost its script
    cache: nothing ran) loads the script and runs that call again on this connection."""
    commands = [("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in batch]
    await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
    again: list[_Call] = []
    for call in batch:
        try:
            reply = await conn.read_response()
        except NoScriptError:
            again.append(call)
            continue
        except ResponseError as exc:
            if not call.future.done():
                call.future.set_exception(_after_sending(exc, "redis"))
            continue
        if not call.future.done():
            call.future.set_result(reply)
    for call in again:
        reply = await _evalsha(conn, call.script, call.keys, call.args)
        if not call.future.done():
            call.future.set_result(reply)


async def _evalsha(
    conn: AbstractConnection, script: AsyncScript, keys: list[str], args: list[str | int]
) -> Any:
    await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args, check_health=False)
    try:
        return await conn.read_response()
    except NoScriptError:
        # Not run: the server lost its script cache (restart, SCRIPT FLUSH, failover).
        # Load it on this connection and run it once.
        await conn.send_command("SCRIPT", "LOAD", script.script, check_health=False)
        await conn.read_response()
        await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args, check_health=False)
        return await conn.read_response()


async def _collect(items: Any) -> list[Any]:
    return [item async for item in items]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _pick(items: Sequence[T], indexes: Sequence[int]) -> Sequence[T]:
    # Standalone Redis has one group of every index, in order: no copy on the hot path.
    if len(indexes) == len(items):
        return items
    return [items[i] for i in indexes]


def _state(row: Sequence[Any]) -> CounterState:
    spend, held, over, reset = row
    return CounterState(spend=int(spend), held=int(held), over_limit=int(over) == 1, reset_seconds=int(reset))
