"""What only the in-process store shows; the behaviour both backends share is proven once,
against both, in tests/integration/test_redis_store.py."""

from __future__ import annotations

import pytest

from extproc.store import Claim, Counter, MemoryStore
from extproc.store.windows import DAY, ages_out_at_ms, bucket_index

T0 = 1_700_000_000.0  # an ordinary wall-clock time, seconds
B = 900  # the Day's bucket


def day(counter_id: str = "ns/b/daily|user=ann", limit: int = 100, blocking: bool = True) -> Counter:
    return Counter(id=counter_id, window_seconds=DAY, bucket_seconds=B, limit=limit, blocking=blocking)


@pytest.fixture()
def store() -> MemoryStore:
    return MemoryStore()


async def test_reset_after_spending_is_when_that_bucket_ages_out(store: MemoryStore) -> None:
    c = day(limit=10)
    await store.record([Claim(c, 10)], "r1", T0)
    now = T0 + 5
    (state,) = (await store.admit([Claim(c, 0)], "r2", 60, now)).states
    expected_ms = ages_out_at_ms(bucket_index(int(T0 * 1000), B), DAY, B) - int(now * 1000)
    assert state.reset_seconds == -(-expected_ms // 1000)
    assert DAY - 5 <= state.reset_seconds <= DAY + B


async def test_spend_younger_than_a_day_still_counts(store: MemoryStore) -> None:
    c = day(limit=10)
    await store.record([Claim(c, 10)], "r1", T0)
    assert not (await store.admit([Claim(c, 0)], "r2", 60, T0 + DAY - 0.001)).admitted


async def test_reset_when_holds_block_is_the_earliest_lease(store: MemoryStore) -> None:
    c = day(limit=100)
    await store.admit([Claim(c, 50)], "long", 120, T0)
    await store.admit([Claim(c, 50)], "short", 45, T0 + 1)
    await store.release([c], "short")
    await store.admit([Claim(c, 50)], "mid", 90, T0 + 2)
    (state,) = await store.read([c], T0 + 10)
    # "short" was released: the earliest live lease is "mid" (T0 + 92).
    assert state.over_limit and state.reset_seconds == 82


async def test_untouched_counters_are_swept_once_aged_out(store: MemoryStore) -> None:
    stale = day("stale")
    await store.record([Claim(stale, 1)], "r", T0)
    other = day("busy", limit=10**9)
    for k in range(4096):
        await store.record([Claim(other, 1)], f"r{k}", T0 + 2 * DAY)
    assert await store.counters_seen("") == ["busy"]


async def test_ping_and_close(store: MemoryStore) -> None:
    assert await store.ping()
    await store.record([Claim(day(), 1)], "r", T0)
    await store.close()
    assert await store.counters_seen("") == []
