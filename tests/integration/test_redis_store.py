"""The spend store against a real redis-server.

The behaviour suite runs against both backends (in memory and Redis), and a randomised
differential test drives both with the same operations: the two agree, state for state.
Then what only Redis has: exact big integers, listpack encoding, TTLs, replicas sharing
spend, failures and the failover store.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio

from extproc.store import (
    Claim,
    Counter,
    FailoverStore,
    Journal,
    MemoryStore,
    RecordId,
    RedisStore,
    SpendStore,
    StoreOutcomeUnknown,
    StoreUnavailable,
    open_store,
)
from extproc.store.windows import DAY, MONTH, WEEK, YEAR, ages_out_at_ms, bucket_index, bucket_seconds_for
from tests.support.redis_server import SPIN, RedisProcess, free_port, start_redis

T0 = 1_700_000_000.0
B = 900
# Generous for a loaded CI machine; the deadline itself is tested with a dead server.
TEST_TIMEOUT = 1.0


def day(counter_id: str = "ns/b/daily|user=ann", limit: int = 100, blocking: bool = True) -> Counter:
    return Counter(id=counter_id, window_seconds=DAY, bucket_seconds=B, limit=limit, blocking=blocking)


def window(counter_id: str, window_seconds: int, limit: int, blocking: bool = True) -> Counter:
    return Counter(counter_id, window_seconds, bucket_seconds_for(window_seconds), limit, blocking)


@pytest.fixture()
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT)
    yield store
    await store.close()


@pytest.fixture()
def raw(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SpendStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    backend = RedisStore(url, timeout_seconds=TEST_TIMEOUT)
    yield backend
    await backend.close()


# -- the behaviour suite: both backends ------------------------------------------------


async def test_admits_under_the_limit_and_rejects_at_it(store: SpendStore) -> None:
    c = day(limit=100)
    assert (await store.admit([Claim(c, 0)], "r1", 60, T0)).admitted
    await store.record([Claim(c, 99)], "r1", T0)
    assert (await store.admit([Claim(c, 0)], "r2", 60, T0 + 1)).admitted
    await store.record([Claim(c, 1)], "r2", T0 + 1)
    result = await store.admit([Claim(c, 0)], "r3", 60, T0 + 2)
    assert not result.admitted
    (state,) = result.states
    assert (state.spend, state.held, state.over_limit) == (100, 0, True)


async def test_an_unseen_counter_is_empty(store: SpendStore) -> None:
    (state,) = await store.read([day("never")], T0)
    assert (state.spend, state.held, state.over_limit, state.reset_seconds) == (0, 0, False, 0)


@pytest.mark.parametrize("window_seconds", [DAY, WEEK, MONTH, YEAR])
async def test_reset_after_spending_is_within_window_and_one_bucket(
    store: SpendStore, window_seconds: int
) -> None:
    c = window("w", window_seconds, limit=10)
    bucket = c.bucket_seconds
    await store.record([Claim(c, 10)], "r1", T0)
    result = await store.admit([Claim(c, 0)], "r2", 60, T0)
    assert not result.admitted
    now_ms = int(T0 * 1000)
    expected_ms = ages_out_at_ms(bucket_index(now_ms, bucket), window_seconds, bucket) - now_ms
    assert result.states[0].reset_seconds == -(-expected_ms // 1000)
    assert window_seconds <= result.states[0].reset_seconds <= window_seconds + bucket


async def test_spend_ages_out_exactly_when_its_bucket_leaves_the_window(store: SpendStore) -> None:
    c = day(limit=10)
    await store.record([Claim(c, 10)], "r1", T0)
    out_s = ages_out_at_ms(bucket_index(int(T0 * 1000), B), DAY, B) / 1000
    assert not (await store.admit([Claim(c, 0)], "r2", 60, T0 + DAY - 0.001)).admitted
    assert not (await store.admit([Claim(c, 0)], "r3", 60, out_s - 0.001)).admitted
    result = await store.admit([Claim(c, 0)], "r4", 60, out_s)
    assert result.admitted
    assert result.states[0].spend == 0


async def test_the_window_slides_bucket_by_bucket(store: SpendStore) -> None:
    c = day(limit=1000)
    start = (int(T0) // B) * B
    for k in range(4):
        await store.record([Claim(c, k + 1)], f"r{k}", start + k * B)
    first_out = ages_out_at_ms(start // B, DAY, B) / 1000
    spends = [(await store.read([c], first_out + k * B))[0].spend for k in range(5)]
    assert spends == [9, 7, 4, 0, 0]


async def test_reset_walks_as_many_buckets_as_needed(store: SpendStore) -> None:
    c = day(limit=4)
    start = (int(T0) // B) * B
    for k in range(3):
        await store.record([Claim(c, 3)], f"r{k}", start + k * B)  # 3 + 3 + 3 in three buckets
    now = start + 2 * B + 100
    (state,) = await store.read([c], now)
    # Down to 3 < 4 only once the first two buckets have aged out.
    assert state.reset_seconds == ages_out_at_ms(start // B + 1, DAY, B) // 1000 - int(now)


async def test_a_hold_counts_until_the_request_records(store: SpendStore) -> None:
    c = day(limit=100)
    assert (await store.admit([Claim(c, 60)], "r1", 60, T0)).admitted
    second = await store.admit([Claim(c, 40)], "r2", 60, T0)
    assert second.admitted and second.states[0].held == 60
    third = await store.admit([Claim(c, 1)], "r3", 60, T0)
    assert not third.admitted and third.states[0].held == 100
    await store.record([Claim(c, 5)], "r1", T0 + 1)
    (state,) = await store.read([c], T0 + 1)
    assert (state.spend, state.held) == (5, 40)


async def test_release_drops_the_hold_without_spending(store: SpendStore) -> None:
    c = day(limit=100)
    await store.admit([Claim(c, 70)], "r1", 60, T0)
    await store.release([c], "r1")
    await store.release([c], "r1")  # twice is harmless
    (state,) = await store.read([c], T0)
    assert (state.spend, state.held) == (0, 0)


async def test_a_rejected_request_places_no_hold(store: SpendStore) -> None:
    blocker, other = day("a", limit=10), day("b", limit=1000)
    await store.record([Claim(blocker, 10)], "r0", T0)
    assert not (await store.admit([Claim(blocker, 5), Claim(other, 5)], "r1", 60, T0)).admitted
    assert [s.held for s in await store.read([blocker, other], T0)] == [0, 0]


async def test_holds_expire_with_their_lease(store: SpendStore) -> None:
    c = day(limit=100)
    await store.admit([Claim(c, 100)], "r1", 30, T0)
    blocked = await store.admit([Claim(c, 1)], "r2", 30, T0 + 29.999)
    assert not blocked.admitted
    assert blocked.states[0].reset_seconds == 1
    later = await store.admit([Claim(c, 1)], "r3", 30, T0 + 30)
    assert later.admitted and later.states[0].held == 0
    # The expired hold's late record adds spend but does not subtract its hold twice.
    await store.record([Claim(c, 40)], "r1", T0 + 31)
    (state,) = await store.read([c], T0 + 31)
    assert (state.spend, state.held) == (40, 1)


async def test_reset_when_holds_block_is_the_earliest_live_lease(store: SpendStore) -> None:
    c = day(limit=100)
    await store.admit([Claim(c, 50)], "long", 120, T0)
    await store.admit([Claim(c, 50)], "short", 45, T0 + 1)
    await store.release([c], "short")
    await store.admit([Claim(c, 50)], "mid", 90, T0 + 2)
    (state,) = await store.read([c], T0 + 10)
    assert state.over_limit and state.reset_seconds == 82


async def test_a_burst_of_concurrent_admits_cannot_all_slip_under_the_remaining(store: SpendStore) -> None:
    c = day(limit=1_000)
    await store.record([Claim(c, 900)], "seed", T0)

    async def one(i: int) -> bool:
        return (await store.admit([Claim(c, 30)], f"burst-{i}", 60, T0 + 1)).admitted

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert sum(results) == 4  # 900, 930, 960, 990 admitted; 1020 >= 1000 from then on


async def test_audit_counters_are_charged_and_reported_but_never_reject(store: SpendStore) -> None:
    audit = day("audit", limit=10, blocking=False)
    await store.record([Claim(audit, 50)], "r0", T0)
    result = await store.admit([Claim(audit, 5)], "r1", 60, T0)
    assert result.admitted
    assert result.states[0].over_limit and result.states[0].reset_seconds > 0
    await store.record([Claim(audit, 5)], "r1", T0)
    assert (await store.read([audit], T0))[0].spend == 55


async def test_any_blocking_counter_over_its_limit_rejects(store: SpendStore) -> None:
    roomy, full, audit = day("roomy", limit=1000), day("full", limit=10), day("audit", 1, blocking=False)
    await store.record([Claim(full, 10), Claim(audit, 10)], "r0", T0)
    result = await store.admit([Claim(roomy, 1), Claim(full, 1), Claim(audit, 1)], "r1", 60, T0)
    assert not result.admitted
    assert [s.over_limit for s in result.states] == [False, True, True]


async def test_idle_longer_than_a_window_forgets_everything(store: SpendStore) -> None:
    c = day(limit=10)
    for k in range(5):
        await store.record([Claim(c, 2)], f"r{k}", T0 + k * B)
    assert (await store.read([c], T0 + 3 * DAY))[0].spend == 0
    assert await store.counters_seen("") == []


async def test_a_late_record_lands_in_its_own_bucket(store: SpendStore) -> None:
    c = day(limit=1000)
    await store.record([Claim(c, 5)], "new", T0 + 2 * B)
    await store.record([Claim(c, 7)], "late", T0)
    assert (await store.read([c], T0 + 2 * B))[0].spend == 12


async def test_a_record_older_than_the_window_is_not_counted(store: SpendStore) -> None:
    c = day(limit=1000)
    await store.record([Claim(c, 5)], "now", T0 + 2 * DAY)
    await store.record([Claim(c, 7)], "ancient", T0)
    assert (await store.read([c], T0 + 2 * DAY))[0].spend == 5


async def test_a_resized_window_starts_afresh_and_keeps_holds(store: SpendStore) -> None:
    c = day(limit=1000)
    await store.record([Claim(c, 500)], "r0", T0)
    await store.admit([Claim(c, 40)], "r1", 60, T0)
    week = Counter(id=c.id, window_seconds=WEEK, bucket_seconds=7200, limit=1000, blocking=True)
    (state,) = await store.read([week], T0 + 1)
    assert (state.spend, state.held) == (0, 40)
    await store.record([Claim(week, 3)], "r1", T0 + 2)
    (state,) = await store.read([week], T0 + 2)
    assert (state.spend, state.held) == (3, 0)


async def test_counters_seen_lists_ids_with_spend_under_a_prefix(store: SpendStore) -> None:
    ids = ["ns/b/e|user=ann", "ns/b/e|user=bob", "ns/b/e|user=a b{c}%d", "ns/b/other"]
    await store.record([Claim(day(i), 1) for i in ids], "r", T0)
    await store.record([Claim(day("ns/b/e|user=zero"), 0)], "r", T0)
    assert await store.counters_seen("ns/b/e|") == sorted(ids[:3])
    assert await store.counters_seen("ns/b/e|user=a b{") == ["ns/b/e|user=a b{c}%d"]


async def test_large_amounts_stay_exact(store: SpendStore) -> None:
    c = day(limit=10**16)
    five_trillion_nano_usd = 5 * 10**12  # $5,000 in nano-USD: far beyond 2^31
    for k in range(3):
        await store.record([Claim(c, five_trillion_nano_usd)], f"r{k}", T0)
    await store.admit([Claim(c, 2**40 + 1)], "h", 60, T0)
    (state,) = await store.read([c], T0)
    assert (state.spend, state.held) == (15 * 10**12, 2**40 + 1)


@pytest.mark.parametrize("seed", [20240601, 7, 99])
async def test_the_backends_agree_under_random_traffic(redis_url: str, seed: int) -> None:
    """Differential: the same random operations on both backends, state for state."""
    memory = MemoryStore()
    shared = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT)
    seen = {"admitted": 0, "rejected": 0, "held": 0, "reset": 0, "credited": 0}
    try:
        rng = random.Random(seed)
        counters = [
            day("d1", limit=50),
            day("d2", limit=20, blocking=False),
            window("w1", WEEK, limit=80),
            window("m1", MONTH, limit=200),
            Counter("small", 3600, bucket_seconds_for(3600), 30, True),
        ]
        now = T0
        open_holds: list[tuple[str, list[Counter]]] = []
        for step in range(400):
            now += rng.choice([0, 0.5, 7, 60, 899.999, 900, 3600, 20_000])
            picked = rng.sample(counters, rng.randint(1, len(counters)))
            op = rng.random()
            if op < 0.45:
                holds = [Claim(c, rng.randint(0, 12)) for c in picked]
                lease = rng.choice([5, 30, 600])
                a = await memory.admit(holds, f"h{step}", lease, now)
                b = await shared.admit(holds, f"h{step}", lease, now)
                assert a == b, (step, "admit")
                seen["admitted" if a.admitted else "rejected"] += 1
                seen["held"] += any(state.held for state in a.states)
                seen["reset"] += any(state.reset_seconds for state in a.states)
                if a.admitted:
                    open_holds.append((f"h{step}", picked))
            elif op < 0.8 and open_holds:
                hold_id, held_on = open_holds.pop(rng.randrange(len(open_holds)))
                spent = [Claim(c, rng.randint(0, 15)) for c in held_on]
                await memory.record(spent, hold_id, now)
                await shared.record(spent, hold_id, now)
            elif op < 0.87 and open_holds:
                hold_id, held_on = open_holds.pop(rng.randrange(len(open_holds)))
                await memory.release(held_on, hold_id)
                await shared.release(held_on, hold_id)
            elif op < 0.93:
                # An operator's credit (or, one time in four, a reset) of one counter.
                credit = None if rng.random() < 0.25 else rng.randint(1, 30)
                adjusted = await memory.adjust(picked[0], credit, now)
                assert adjusted == await shared.adjust(picked[0], credit, now), (step, "adjust")
                seen["credited"] += adjusted[0] > adjusted[1]
            else:
                spent = [Claim(c, rng.randint(1, 10)) for c in picked]
                await memory.record(spent, f"x{step}", now)
                await shared.record(spent, f"x{step}", now)
            assert await memory.read(counters, now) == await shared.read(counters, now), (step, "read")
            for c in picked:
                assert [h.amount for h in await memory.holds(c, now)] == [
                    h.amount for h in await shared.holds(c, now)
                ], (step, "holds")
        assert await memory.counters_seen("") == await shared.counters_seen("")
        assert all(seen.values()), seen  # the traffic reached every case it is meant to compare
    finally:
        await shared.close()


# -- Redis only ------------------------------------------------------------------------


async def test_amounts_beyond_double_precision_round_trip_exactly(redis_store: RedisStore) -> None:
    c = day(limit=2**62)
    await redis_store.record([Claim(c, 2**53 + 1)], "r1", T0)
    await redis_store.record([Claim(c, 2)], "r2", T0 + 1)
    (state,) = await redis_store.read([c], T0 + 1)
    assert state.spend == 2**53 + 3


async def test_keys_share_one_hash_tag_that_subject_values_cannot_break(redis_store: RedisStore) -> None:
    bucket_key, hold_key = redis_store.keys_for("ns/b/e|user={evil} %x")
    assert bucket_key == "extproc:{ns/b/e|user=%7Bevil%7D%20%25x}:b"
    assert hold_key == "extproc:{ns/b/e|user=%7Bevil%7D%20%25x}:h"
    with pytest.raises(ValueError):
        RedisStore("redis://127.0.0.1:1/0", key_prefix="x{y}:")


async def test_a_day_of_buckets_stays_listpack_encoded(redis_store: RedisStore, raw: redis.Redis) -> None:
    c = day(limit=10**12)
    for k in range(300):  # three days of buckets, one record per 15 minutes
        await redis_store.record([Claim(c, k + 1)], f"r{k}", T0 + k * B)
    bucket_key, _ = redis_store.keys_for(c.id)
    assert raw.object("encoding", bucket_key) == "listpack"
    assert raw.hlen(bucket_key) <= 96 + 1 + 4
    (state,) = await redis_store.read([c], T0 + 299 * B)
    assert state.spend == sum(range(300 - 96, 301))  # the last 97 buckets


async def test_keys_expire_on_their_own(redis_store: RedisStore, raw: redis.Redis) -> None:
    c = day(limit=1000)
    bucket_key, hold_key = redis_store.keys_for(c.id)
    await redis_store.record([Claim(c, 5)], "r0", T0)
    assert 0 < raw.pttl(bucket_key) <= 97 * B * 1000
    await redis_store.admit([Claim(c, 7)], "r1", 600, T0)
    assert 97 * B * 1000 < raw.pttl(hold_key) <= 97 * B * 1000 + 600_000
    assert raw.pttl(bucket_key) > 97 * B * 1000  # lengthened for the lease, never shortened
    await redis_store.record([Claim(c, 1)], "r2", T0)
    assert raw.pttl(bucket_key) > 97 * B * 1000


async def test_an_idle_counter_leaves_no_keys(redis_store: RedisStore, raw: redis.Redis) -> None:
    c = day(limit=1000)
    await redis_store.admit([Claim(c, 7)], "r1", 60, T0)
    await redis_store.record([Claim(c, 3)], "r1", T0)
    await redis_store.read([c], T0 + 2 * DAY)
    assert raw.keys("*") == []


async def test_two_replicas_share_spend_and_holds(redis_url: str) -> None:
    a = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT)
    b = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT)
    try:
        c = day(limit=100)
        assert (await a.admit([Claim(c, 60)], "a1", 60, T0)).admitted
        seen_by_b = await b.admit([Claim(c, 40)], "b1", 60, T0)
        assert seen_by_b.admitted and seen_by_b.states[0].held == 60
        assert not (await a.admit([Claim(c, 1)], "a2", 60, T0)).admitted  # 60 + 40 in flight
        await a.record([Claim(c, 100)], "a1", T0)
        await b.release([c], "b1")
        blocked = await b.admit([Claim(c, 0)], "b2", 60, T0 + 1)
        assert not blocked.admitted
        assert (blocked.states[0].spend, blocked.states[0].held) == (100, 0)
    finally:
        await a.close()
        await b.close()


async def test_scripts_survive_a_flushed_script_cache(redis_store: RedisStore, raw: redis.Redis) -> None:
    c = day(limit=100)
    await redis_store.record([Claim(c, 1)], "r0", T0)
    raw.script_flush()
    await redis_store.record([Claim(c, 2)], "r1", T0)
    assert (await redis_store.read([c], T0))[0].spend == 3


async def test_no_redis_means_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.admit([Claim(day(), 1)], "r", 60, T0)
        # Nothing was sent, so this is not the "may have been applied" kind.
        assert not isinstance(caught.value, StoreOutcomeUnknown)
        with pytest.raises(StoreUnavailable):
            await store.record([Claim(day(), 1)], "r", T0)
        assert not await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.counters_seen("")
    finally:
        await store.close()


# Keeps the server busy (it serves nobody else meanwhile), like a slow Redis: a script
# sent meanwhile is read and run only afterwards. (A loop on TIME would never end:
# inside a script, time stands still.)
async def busy_redis(raw: redis.Redis, ms: int) -> asyncio.Task[object]:
    calibration = 2_000_000
    started = time.perf_counter()
    raw.eval(SPIN, 0, calibration)
    per_ms = calibration / max((time.perf_counter() - started) * 1000, 0.001)
    task = asyncio.ensure_future(asyncio.to_thread(raw.eval, SPIN, 0, int(per_ms * ms)))
    await asyncio.sleep(0.05)  # the spin is running
    return task


async def test_a_reply_that_never_comes_is_outcome_unknown(redis_store: RedisStore, raw: redis.Redis) -> None:
    c = day(limit=100)
    await redis_store.record([Claim(c, 1)], "warm", T0)  # connected, scripts loaded
    store = RedisStore(redis_url_of(raw), timeout_seconds=0.2)
    try:
        await store.read([c], T0)
        busy = await busy_redis(raw, 600)
        with pytest.raises(StoreOutcomeUnknown):
            await store.record([Claim(c, 10)], "r1", T0)
        await busy
        # The script ran after all, once Redis got to it: exactly why it is never replayed.
        assert (await store.read([c], T0))[0].spend == 11
    finally:
        await store.close()


async def test_a_read_only_replica_refuses_and_that_is_not_uncertain(redis_url: str) -> None:
    replica = start_redis()
    store = RedisStore(replica.url, timeout_seconds=TEST_TIMEOUT)
    try:
        primary_port = redis_url.rsplit(":", 1)[1].split("/")[0]
        admin = redis.Redis.from_url(replica.url)
        admin.execute_command("REPLICAOF", "127.0.0.1", primary_port)  # as after a failover
        admin.close()
        with pytest.raises(StoreUnavailable) as caught:
            await store.record([Claim(day(), 5)], "r", T0)
        assert not isinstance(caught.value, StoreOutcomeUnknown)
        assert "refused" in str(caught.value)
    finally:
        await store.close()
        replica.stop()


def redis_url_of(raw: redis.Redis) -> str:
    kwargs = raw.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


async def test_open_store_picks_the_backend(redis_url: str) -> None:
    assert isinstance(open_store(None), MemoryStore)
    shared = open_store(redis_url, timeout_seconds=TEST_TIMEOUT)
    try:
        assert isinstance(shared, FailoverStore)
        assert await shared.ping()
    finally:
        await shared.close()


# -- failover: Redis going away and coming back ----------------------------------------


async def stop_and_settle(proc: RedisProcess) -> None:
    """Kill Redis, then let the event loop see its sockets close, as it would between two
    real requests. (Dying mid-request is the outcome-unknown case, tested above.)"""
    proc.stop()
    await asyncio.sleep(0.05)


async def test_fail_open_keeps_admitting_and_replays_spend_when_redis_returns() -> None:
    proc = start_redis()
    store = FailoverStore(
        RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=3600,  # replay driven by the test
    )
    c, audit = day(limit=100), day("audit", limit=5, blocking=False)
    try:
        assert (await store.admit([Claim(c, 10), Claim(audit, 10)], "r0", 60, T0, fail_open=True)).admitted
        await store.record([Claim(c, 10), Claim(audit, 10)], "r0", T0)
        await stop_and_settle(proc)

        # Down: admitted on the local view; spend is kept, never dropped.
        both = [Claim(c, 10), Claim(audit, 10)]
        assert (await store.admit(both, "r1", 60, T0 + 1, fail_open=True)).admitted
        await store.record([Claim(c, 30), Claim(audit, 3)], "r1", T0 + 1)
        await store.record([Claim(c, 20)], "r2", T0 + 2)
        assert store.pending_records == 2  # records r1 (c 30, audit 3) and r2 (c 20)
        # The local view now holds 50 of c's 100: it blocks once that is spent.
        await store.record([Claim(c, 50)], "r3", T0 + 3)
        assert not (await store.admit([Claim(c, 1)], "r4", 60, T0 + 4, fail_open=True)).admitted
        assert store.uncertain_records == 0

        # Back (empty: the old server had no persistence). Replay lands every amount.
        proc = start_redis(proc.port)
        assert await store.replay_pending() == 3  # r1, r2, r3
        assert store.pending_records == 0
        assert await store.replay_pending() == 0  # nothing twice
        states = await store.read([c, audit], T0 + 5)
        assert [s.spend for s in states] == [100, 3]
        assert not (await store.admit([Claim(c, 1)], "r5", 60, T0 + 5, fail_open=True)).admitted
    finally:
        await store.close()
        proc.stop()


async def test_replay_happens_by_itself_once_redis_answers_again() -> None:
    proc = start_redis()
    store = FailoverStore(
        RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=0.05,
    )
    c = day(limit=100)
    try:
        await store.admit([Claim(c, 0)], "warm", 60, T0)
        await stop_and_settle(proc)
        await store.record([Claim(c, 42)], "r1", T0)
        assert store.pending_records == 1
        proc = start_redis(proc.port)
        for _ in range(100):
            if store.pending_records == 0:
                break
            await asyncio.sleep(0.05)
        assert store.pending_records == 0
        assert (await store.read([c], T0))[0].spend == 42
    finally:
        await store.close()
        proc.stop()


async def test_fail_closed_rejects_with_store_unavailable_but_keeps_spend() -> None:
    proc = start_redis()
    store = FailoverStore(
        RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=3600,
    )
    c = day(limit=100)
    try:
        assert (await store.admit([Claim(c, 0)], "r0", 60, T0)).admitted
        await stop_and_settle(proc)
        with pytest.raises(StoreUnavailable):
            await store.admit([Claim(c, 0)], "r1", 60, T0 + 1)
        await store.record([Claim(c, 7)], "r0", T0 + 1)  # a request admitted before the outage
        assert store.pending_records == 1
        proc = start_redis(proc.port)
        assert await store.replay_pending() == 1
        assert (await store.read([c], T0 + 1))[0].spend == 7
    finally:
        await store.close()
        proc.stop()


async def test_an_outage_costs_one_deadline_then_skips_the_primary() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    open_ = FailoverStore(RedisStore(url, timeout_seconds=0.2), local=MemoryStore(), retry_after_seconds=60)
    closed = FailoverStore(RedisStore(url, timeout_seconds=0.2), local=MemoryStore(), retry_after_seconds=60)
    c = day(limit=100)
    try:
        assert (await open_.admit([Claim(c, 1)], "r0", 60, T0, fail_open=True)).admitted
        assert open_.primary_down
        await closed.record([Claim(c, 1)], "r0", T0)  # fails, keeps the spend, marks the primary down
        assert closed.primary_down and closed.pending_records == 1
        with pytest.raises(StoreUnavailable):
            await closed.admit([Claim(c, 1)], "r1", 60, T0)  # rejected without waiting on Redis
        assert await closed.replay_pending() == 0  # the probe fails; the spend stays queued
        assert closed.pending_records == 1
    finally:
        await open_.close()
        await closed.close()


async def test_a_record_whose_outcome_is_unknown_is_sent_again_and_applied_once(
    redis_url: str, raw: redis.Redis
) -> None:
    """The script ran (Redis was busy past our deadline, then finished it): the answer was
    lost. The record goes again with the same id until confirmed, and counts once."""
    store = FailoverStore(
        RedisStore(redis_url, timeout_seconds=0.2),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=3600,
    )
    c = day(limit=100)
    try:
        await store.admit([Claim(c, 0)], "warm", 60, T0)
        await asyncio.sleep(0.2)  # its first heartbeat done: the record goes on a warm connection
        busy = await busy_redis(raw, 600)
        await store.record([Claim(c, 10)], "r1", T0)
        assert (store.uncertain_records, store.pending_records) == (1, 1)
        await busy
        # Confirmed now: whether the first attempt ran once Redis got to it (Redis runs a
        # command whose client hung up only if it still finds it buffered) or not, once.
        assert await store.replay_pending() == 1
        assert (await store.read([c], T0))[0].spend == 10  # applied once, not twice
    finally:
        await store.close()


async def test_a_record_id_is_applied_at_most_once_and_forgotten_below_the_low_water_mark(
    redis_url: str, raw: redis.Redis
) -> None:
    store = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT)
    c = day("ns/b/ids|user=ann", limit=10_000)
    try:
        for _ in range(3):  # the same record sent three times
            await store.record([Claim(c, 7)], "", T0, RecordId("w1", 5, 5))
        await store.record([Claim(c, 1)], "", T0, RecordId("w2", 5, 1))  # another writer, same seq
        assert (await store.read([c], T0))[0].spend == 8
        bucket, _ = store.keys_for(c.id)
        tag = bucket[:-2]
        assert raw.zrange(f"{tag}:r", 0, -1) == ["w1:0000000000000005", "w2:0000000000000005"]
        # w1 confirms everything below 9: its mark moves to 8 and its members below go.
        await store.record([Claim(c, 2)], "", T0, RecordId("w1", 9, 9))
        assert raw.hget(f"{tag}:w", "w1") == "8"
        assert raw.zrange(f"{tag}:r", 0, -1) == ["w1:0000000000000009", "w2:0000000000000005"]
        await store.record([Claim(c, 7)], "", T0, RecordId("w1", 5, 9))  # below the mark: nothing
        assert (await store.read([c], T0))[0].spend == 10
        assert store.duplicates == 3
        assert 0 < raw.pttl(f"{tag}:r") <= (DAY + B) * 1000  # lives as long as the spend
    finally:
        await store.close()


async def test_an_outage_starts_from_the_spend_redis_last_reported_so_a_spent_budget_stays_blocked() -> None:
    proc = start_redis()
    store = FailoverStore(
        RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=3600,
    )
    spent, fresh = day("spent", limit=100), day("fresh", limit=100)
    try:
        assert (await store.admit([Claim(spent, 60)], "r0", 60, T0)).admitted
        await store.record([Claim(spent, 60)], "r0", T0)
        assert (await store.admit([Claim(spent, 40)], "r1", 60, T0)).admitted
        await store.record([Claim(spent, 40)], "r1", T0)  # 100 of 100: Redis says blocked
        assert not (await store.admit([Claim(spent, 1)], "r2", 60, T0)).admitted
        await stop_and_settle(proc)

        with pytest.raises(StoreUnavailable):
            await store.admit([Claim(spent, 1)], "r3", 60, T0 + 1)
        # Down: the local view starts from the 100 Redis last reported, not from zero.
        assert not (await store.admit([Claim(spent, 1)], "r3", 60, T0 + 1, fail_open=True)).admitted
        # A counter never seen before the outage starts from zero, and counts what it spends.
        assert (await store.admit([Claim(fresh, 1)], "r4", 60, T0 + 1, fail_open=True)).admitted
        await store.record([Claim(fresh, 100)], "r4", T0 + 1)
        assert not (await store.admit([Claim(fresh, 1)], "r5", 60, T0 + 2, fail_open=True)).admitted
        assert store.pending_records == 1  # fresh's 100; the seeded 100 is never replayed
    finally:
        await store.close()
        proc.stop()


async def test_a_sidecar_that_dies_during_an_outage_replays_its_journal_exactly_once(tmp_path) -> None:
    """Spend recorded while Redis was down survives the process: a new store on the same
    journal sends it when Redis answers; a record that did land before the crash, whose
    acknowledgement was lost, adds nothing the second time."""
    proc = start_redis()
    c = day("ns/b/journal|user=ann", limit=10_000)
    journal = Journal(tmp_path / "journal")
    store = FailoverStore(
        RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=3600,
        journal=journal,
        recovered=journal.open(),
    )
    try:
        await store.record([Claim(c, 5)], "r0", T0)  # confirmed: acknowledged in the journal
        await stop_and_settle(proc)
        for i in range(1, 4):
            await store.record([Claim(c, 10 * i)], f"r{i}", T0 + i)  # 10 + 20 + 30 while down
        assert store.pending_records == 3
        # Killed: no close, no replay. (The journal's files are all that is left.)
        await journal.close()
        proc = start_redis(proc.port)

        # One of the three had landed after all (its answer lost): apply it as it would have.
        landed = RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT)
        await landed.record([Claim(c, 20)], "", T0 + 2, RecordId(store.writer, 3, 2))
        await landed.close()

        again_journal = Journal(tmp_path / "journal")
        recovered = again_journal.open()
        assert [[c.amount for c in r.claims] for r in recovered] == [[10], [20], [30]]
        again = FailoverStore(
            RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
            local=MemoryStore(),
            retry_after_seconds=0,
            replay_interval_seconds=3600,
            journal=again_journal,
            recovered=recovered,
        )
        try:
            assert await again.replay_pending() == 3
            assert (await again.read([c], T0 + 3))[0].spend == 60  # 10 + 20 + 30, the 20 once
            assert again.stats()["duplicate_records"] == 1
            assert again_journal.unacknowledged == 0
        finally:
            await again.close()
        # Everything confirmed: a third start finds nothing to replay.
        third = Journal(tmp_path / "journal")
        assert third.open() == []
        await third.close()
    finally:
        await store.close()
        proc.stop()


async def test_replicas_in_an_outage_spend_only_their_share_of_what_remained() -> None:
    """Two replicas, 600 of 1,000 remaining when Redis goes: each admits on its own view up
    to its 300, so together they stay within the limit (plus at most one request each),
    where each alone would have spent the whole 600 (1,600 in all)."""
    proc = start_redis()
    replicas = [
        FailoverStore(
            RedisStore(proc.url, timeout_seconds=TEST_TIMEOUT),
            local=MemoryStore(),
            retry_after_seconds=60,
            replay_interval_seconds=3600,
        )
        for _ in range(2)
    ]
    c = day("ns/b/shared|", limit=1000)
    try:
        for replica in replicas:
            await replica.heartbeat()
        replicas[0]._next_heartbeat = 0.0
        await replicas[0].heartbeat()  # sees both now
        assert [r.replicas for r in replicas] == [2, 2]
        assert (await replicas[0].admit([Claim(c, 400)], "warm", 60, T0, fail_open=True)).admitted
        await replicas[0].record([Claim(c, 400)], "warm", T0)
        # B sees the 400 too
        assert (await replicas[1].admit([Claim(c, 0)], "look", 60, T0, fail_open=True)).admitted
        await stop_and_settle(proc)

        spent = [0, 0]
        for i, replica in enumerate(replicas):
            for n in range(20):
                result = await replica.admit([Claim(c, 50)], f"r{i}-{n}", 60, T0 + 1, fail_open=True)
                if not result.admitted:
                    break
                await replica.record([Claim(c, 50)], f"r{i}-{n}", T0 + 1)
                spent[i] += 50
        assert spent == [300, 300]
        proc = start_redis(proc.port)  # empty: the old server had no persistence
        for replica in replicas:
            await replica.replay_pending()
        (state,) = await replicas[0].read([c], T0 + 2)
        assert state.spend == 600 and 400 + state.spend <= 1000 + 2 * 50
    finally:
        for replica in replicas:
            await replica.close()
        proc.stop()


@pytest.mark.parametrize("skew_seconds", [600, -600])
async def test_with_redis_clock_a_replica_minutes_off_agrees_on_buckets_holds_and_resets(
    redis_url: str, raw: redis.Redis, skew_seconds: int
) -> None:
    """One clock for every replica: Redis's. A replica ten minutes off (either way) places
    spend in the bucket Redis's clock says, sees the other's holds as live, and reports the
    same reset; with callers' clocks the fast one would purge the slow one's hold at once."""
    right = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT, server_clock=True)
    off = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT, server_clock=True)
    naive = RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT)
    c = day(f"ns/b/clock{skew_seconds}|", limit=100)
    now = time.time()
    try:
        assert (await off.admit([Claim(c, 30)], "held", 60, now + skew_seconds)).admitted
        (seen,) = await right.read([c], now)
        assert seen.held == 30  # the lease runs on Redis's clock, not on the off replica's
        await off.record([Claim(c, 100)], "other", now + skew_seconds, RecordId("off", 1, 1))
        (state_right,) = await right.read([c], now)
        (state_off,) = await off.read([c], now + skew_seconds)
        assert state_right == state_off and state_right.spend == 100
        server_seconds = raw.time()[0]
        bucket, _ = right.keys_for(c.id)
        fields = {k for k in raw.hkeys(bucket) if k.isdigit()}
        assert fields == {str(bucket_index(server_seconds * 1000, B))}
        # The reset counts from Redis's now: within one bucket of the window, for both.
        assert DAY - B <= state_right.reset_seconds <= DAY + B
        if skew_seconds < 0:
            # With each caller's own clock, the hold of a replica ten minutes behind is, to
            # a replica on time, long expired: it stops counting at once.
            n = day(f"ns/b/naive{skew_seconds}|", limit=100)
            assert (await naive.admit([Claim(n, 30)], "held", 60, now + skew_seconds)).admitted
            (lost,) = await naive.read([n], now)
            assert lost.held == 0
    finally:
        for store in (right, off, naive):
            await store.close()


async def test_a_redis_out_of_memory_or_with_a_wrong_type_key_keeps_the_record_until_it_can_land(
    redis_url: str, raw: redis.Redis
) -> None:
    store = FailoverStore(
        RedisStore(redis_url, timeout_seconds=TEST_TIMEOUT),
        local=MemoryStore(),
        retry_after_seconds=0,
        replay_interval_seconds=3600,
    )
    oom, typed = day("ns/b/oom|", limit=1000), day("ns/b/typed|", limit=1000)
    bucket, _ = RedisStore(redis_url).keys_for(typed.id)
    used = int(raw.info("memory")["used_memory"])
    try:
        await store.admit([Claim(oom, 0)], "warm", 60, T0)  # connected, scripts loaded
        raw.config_set("maxmemory", str(used // 2))
        raw.config_set("maxmemory-policy", "noeviction")
        await store.record([Claim(oom, 10)], "r1", T0)
        raw.config_set("maxmemory", "0")
        raw.set(bucket, "not a hash")  # a key of the wrong type where a counter lives
        await store.record([Claim(typed, 7)], "r2", T0)
        stats = store.stats()
        assert (stats["pending_records"], stats["error_reply_records"]) == (2, 2)
        raw.delete(bucket)
        assert await store.replay_pending() == 2
        assert [s.spend for s in await store.read([oom, typed], T0)] == [10, 7]
    finally:
        raw.config_set("maxmemory", "0")
        await store.close()


# -- coalescing: script calls of one event-loop tick in one round trip -------------------


async def test_calls_made_in_one_tick_go_in_one_round_trip_each_with_its_own_answer(
    redis_store: RedisStore,
) -> None:
    counters = [day(f"ns/b/daily|user=u{i}", limit=50) for i in range(12)]
    admitted = await asyncio.gather(
        *(redis_store.admit([Claim(c, 10)], f"h{i}", 60, T0) for i, c in enumerate(counters))
    )
    assert [a.admitted for a in admitted] == [True] * 12
    assert (redis_store.calls_sent, redis_store.round_trips) == (12, 1)
    await asyncio.gather(
        *(
            redis_store.record([Claim(c, i)], f"h{i}", T0, RecordId("w", i + 1, i + 1))
            for i, c in enumerate(counters)
        )
    )
    assert redis_store.round_trips == 2
    states = await redis_store.read(counters, T0)
    assert [s.spend for s in states] == list(range(12))  # each record landed on its own counter
    assert all(s.held == 0 for s in states)


async def test_an_error_reply_in_a_tick_fails_its_own_call_only(
    redis_store: RedisStore, raw: redis.Redis
) -> None:
    good, bad = day("ns/b/daily|user=good"), day("ns/b/daily|user=bad")
    raw.set(redis_store.keys_for(bad.id)[0], "not a hash")  # WRONGTYPE for that script only
    results = await asyncio.gather(
        redis_store.admit([Claim(good, 1)], "g", 60, T0),
        redis_store.admit([Claim(bad, 1)], "b", 60, T0),
        redis_store.admit([Claim(good, 1)], "g2", 60, T0),
        return_exceptions=True,
    )
    assert redis_store.round_trips == 1
    assert [type(r).__name__ for r in results] == ["AdmitResult", "StoreErrorReply", "AdmitResult"]


async def test_a_server_that_lost_its_scripts_runs_every_call_of_the_tick(
    redis_store: RedisStore, raw: redis.Redis
) -> None:
    counters = [day(f"ns/b/daily|user=s{i}") for i in range(4)]
    await redis_store.admit([Claim(counters[0], 1)], "warm", 60, T0)  # scripts loaded
    raw.script_flush()
    results = await asyncio.gather(
        *(redis_store.admit([Claim(c, 1)], f"s{i}", 60, T0) for i, c in enumerate(counters))
    )
    assert all(r.admitted for r in results)
    assert [s.held for s in await redis_store.read(counters, T0)] == [2, 1, 1, 1]


async def test_a_tick_sent_to_a_dead_server_fails_every_call_as_not_applied() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=TEST_TIMEOUT)
    try:
        results = await asyncio.gather(
            *(store.admit([Claim(day(f"ns/b/daily|user=d{i}"), 1)], f"d{i}", 60, T0) for i in range(3)),
            return_exceptions=True,
        )
        assert all(type(r) is StoreUnavailable for r in results)  # refused: provably not applied
        assert store.round_trips == 0
    finally:
        await store.close()
