"""The in-process store: admission, accounting, holds and windows without a server."""

from __future__ import annotations

import asyncio

import pytest

from extproc.store import Counter, MemoryStore
from extproc.store.windows import DAY, ages_out_at_ms, bucket_index

T0 = 1_700_000_000.0  # an ordinary wall-clock time, seconds
B = 900  # the Day's bucket


def day(counter_id: str = "ns/b/daily|user=ann", limit: int = 100, blocking: bool = True) -> Counter:
    return Counter(id=counter_id, window_seconds=DAY, bucket_seconds=B, limit=limit, blocking=blocking)


@pytest.fixture()
def store() -> MemoryStore:
    return MemoryStore()


async def test_admits_under_the_limit_and_rejects_at_it(store: MemoryStore) -> None:
    c = day(limit=100)
    assert (await store.admit([c], [0], "r1", 60, T0)).admitted
    await store.record([c], [99], "r1", T0)
    assert (await store.admit([c], [0], "r2", 60, T0 + 1)).admitted
    await store.record([c], [1], "r2", T0 + 1)
    result = await store.admit([c], [0], "r3", 60, T0 + 2)
    assert not result.admitted
    (state,) = result.states
    assert (state.spend, state.held, state.over_limit) == (100, 0, True)


async def test_reset_after_spending_is_when_that_bucket_ages_out(store: MemoryStore) -> None:
    c = day(limit=10)
    await store.record([c], [10], "r1", T0)
    now = T0 + 5
    (state,) = (await store.admit([c], [0], "r2", 60, now)).states
    expected_ms = ages_out_at_ms(bucket_index(int(T0 * 1000), B), DAY, B) - int(now * 1000)
    assert state.reset_seconds == -(-expected_ms // 1000)
    assert DAY - 5 <= state.reset_seconds <= DAY + B


async def test_spend_ages_out_exactly_when_its_bucket_leaves_the_window(store: MemoryStore) -> None:
    c = day(limit=10)
    await store.record([c], [10], "r1", T0)
    out_s = ages_out_at_ms(bucket_index(int(T0 * 1000), B), DAY, B) / 1000
    assert not (await store.admit([c], [0], "r2", 60, out_s - 0.001)).admitted
    result = await store.admit([c], [0], "r3", 60, out_s)
    assert result.admitted
    assert result.states[0].spend == 0


async def test_spend_younger_than_a_day_still_counts(store: MemoryStore) -> None:
    c = day(limit=10)
    await store.record([c], [10], "r1", T0)
    assert not (await store.admit([c], [0], "r2", 60, T0 + DAY - 0.001)).admitted


async def test_a_hold_counts_until_the_request_records(store: MemoryStore) -> None:
    c = day(limit=100)
    assert (await store.admit([c], [60], "r1", 60, T0)).admitted
    second = await store.admit([c], [40], "r2", 60, T0)
    assert second.admitted
    assert second.states[0].held == 60  # the state is before r2's own hold
    third = await store.admit([c], [1], "r3", 60, T0)
    assert not third.admitted
    assert third.states[0].held == 100
    await store.record([c], [5], "r1", T0 + 1)  # r1 cost less than it held
    (state,) = await store.read([c], T0 + 1)
    assert (state.spend, state.held) == (5, 40)


async def test_release_drops_the_hold_without_spending(store: MemoryStore) -> None:
    c = day(limit=100)
    await store.admit([c], [70], "r1", 60, T0)
    await store.release([c], "r1")
    (state,) = await store.read([c], T0)
    assert (state.spend, state.held) == (0, 0)


async def test_a_rejected_request_places_no_hold(store: MemoryStore) -> None:
    blocker, other = day("a", limit=10), day("b", limit=1000)
    await store.record([blocker], [10], "r0", T0)
    result = await store.admit([blocker, other], [5, 5], "r1", 60, T0)
    assert not result.admitted
    assert [s.held for s in await store.read([blocker, other], T0)] == [0, 0]


async def test_holds_expire_with_their_lease(store: MemoryStore) -> None:
    c = day(limit=100)
    await store.admit([c], [100], "r1", 30, T0)
    blocked = await store.admit([c], [1], "r2", 30, T0 + 29.999)
    assert not blocked.admitted
    # Holds alone block: the reset is the wait for the lease.
    assert blocked.states[0].reset_seconds == 1
    later = await store.admit([c], [1], "r3", 30, T0 + 30)
    assert later.admitted
    assert later.states[0].held == 0
    # The expired hold's late record adds spend but does not subtract a hold twice.
    await store.record([c], [40], "r1", T0 + 31)
    (state,) = await store.read([c], T0 + 31)
    assert (state.spend, state.held) == (40, 1)


async def test_reset_when_holds_block_is_the_earliest_lease(store: MemoryStore) -> None:
    c = day(limit=100)
    await store.admit([c], [50], "long", 120, T0)
    await store.admit([c], [50], "short", 45, T0 + 1)
    await store.release([c], "short")
    await store.admit([c], [50], "mid", 90, T0 + 2)
    (state,) = await store.read([c], T0 + 10)
    # "short" was released: the earliest live lease is "mid" (T0 + 92).
    assert state.over_limit and state.reset_seconds == 82


async def test_a_burst_of_concurrent_admits_cannot_all_slip_under_the_remaining(store: MemoryStore) -> None:
    c = day(limit=1_000)
    await store.record([c], [900], "seed", T0)  # 100 remaining

    async def one(i: int) -> bool:
        return (await store.admit([c], [30], f"burst-{i}", 60, T0 + 1)).admitted

    results = await asyncio.gather(*(one(i) for i in range(50)))
    # 900, 930, 960, 990 are under 1000; the fifth sees 1020 >= 1000.
    assert sum(results) == 4


async def test_audit_counters_are_charged_and_reported_but_never_reject(store: MemoryStore) -> None:
    audit = day("audit", limit=10, blocking=False)
    await store.record([audit], [50], "r0", T0)
    result = await store.admit([audit], [5], "r1", 60, T0)
    assert result.admitted
    assert result.states[0].over_limit and result.states[0].reset_seconds > 0
    await store.record([audit], [5], "r1", T0)
    assert (await store.read([audit], T0))[0].spend == 55


async def test_any_blocking_counter_over_its_limit_rejects(store: MemoryStore) -> None:
    roomy, full, audit = day("roomy", limit=1000), day("full", limit=10), day("audit", 1, blocking=False)
    await store.record([full, audit], [10, 10], "r0", T0)
    result = await store.admit([roomy, full, audit], [1, 1, 1], "r1", 60, T0)
    assert not result.admitted
    assert [s.over_limit for s in result.states] == [False, True, True]


async def test_idle_longer_than_a_window_forgets_everything(store: MemoryStore) -> None:
    c = day(limit=10)
    for k in range(5):
        await store.record([c], [2], f"r{k}", T0 + k * B)
    (state,) = await store.read([c], T0 + 3 * DAY)
    assert state.spend == 0
    assert await store.counters_seen("") == []


async def test_the_window_slides_bucket_by_bucket(store: MemoryStore) -> None:
    c = day(limit=1000)
    start = (int(T0) // B) * B
    for k in range(4):
        await store.record([c], [k + 1], f"r{k}", start + k * B)  # 1, 2, 3, 4 in 4 buckets
    first_out = ages_out_at_ms(start // B, DAY, B) / 1000
    spends = [(await store.read([c], first_out + k * B))[0].spend for k in range(5)]
    assert spends == [9, 7, 4, 0, 0]


async def test_a_late_record_lands_in_its_own_bucket(store: MemoryStore) -> None:
    c = day(limit=1000)
    await store.record([c], [5], "new", T0 + 2 * B)
    await store.record([c], [7], "late", T0)  # e.g. another replica's clock behind
    (state,) = await store.read([c], T0 + 2 * B)
    assert state.spend == 12


async def test_a_record_older_than_the_window_is_not_counted(store: MemoryStore) -> None:
    c = day(limit=1000)
    await store.record([c], [5], "now", T0 + 2 * DAY)
    await store.record([c], [7], "ancient", T0)
    assert (await store.read([c], T0 + 2 * DAY))[0].spend == 5


async def test_a_resized_window_starts_afresh_and_keeps_holds(store: MemoryStore) -> None:
    c = day(limit=1000)
    await store.record([c], [500], "r0", T0)
    await store.admit([c], [40], "r1", 60, T0)
    week = Counter(id=c.id, window_seconds=7 * DAY, bucket_seconds=7200, limit=1000, blocking=True)
    (state,) = await store.read([week], T0 + 1)
    assert (state.spend, state.held) == (0, 40)


async def test_counters_seen_lists_ids_with_spend_under_a_prefix(store: MemoryStore) -> None:
    await store.record(
        [day("ns/b/e|user=ann"), day("ns/b/e|user=bob"), day("ns/b/other")], [1, 1, 1], "r", T0
    )
    await store.record([day("ns/b/e|user=zero")], [0], "r", T0)
    assert await store.counters_seen("ns/b/e|") == ["ns/b/e|user=ann", "ns/b/e|user=bob"]


async def test_untouched_counters_are_swept_once_aged_out(store: MemoryStore) -> None:
    stale = day("stale")
    await store.record([stale], [1], "r", T0)
    other = day("busy", limit=10**9)
    for k in range(4096):
        await store.record([other], [1], f"r{k}", T0 + 2 * DAY)
    assert await store.counters_seen("") == ["busy"]


async def test_mismatched_lengths_are_a_caller_bug(store: MemoryStore) -> None:
    with pytest.raises(ValueError):
        await store.admit([day()], [], "r", 60, T0)
    with pytest.raises(ValueError):
        await store.record([day()], [1, 2], "r", T0)


async def test_ping_and_close(store: MemoryStore) -> None:
    assert await store.ping()
    await store.record([day()], [1], "r", T0)
    await store.close()
    assert await store.counters_seen("") == []
