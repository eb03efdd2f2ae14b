"""Bucket and reset arithmetic: the granularity contract of trailing windows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.store import windows
from extproc.store.windows import (
    BUCKET_SECONDS,
    DAY,
    MONTH,
    WEEK,
    YEAR,
    ages_out_at_ms,
    bucket_index,
    bucket_seconds_for,
    buckets_per_window,
    oldest_live_index,
    reset_seconds,
)

TABLE_WINDOWS = [DAY, WEEK, MONTH, YEAR]
# Far enough from the epoch to look like real clocks, in ms.
times_ms = st.integers(min_value=0, max_value=4_000_000_000_000)
amounts = st.integers(min_value=1, max_value=10**15)


@pytest.mark.parametrize(
    ("window", "bucket", "count"),
    [(DAY, 900, 96), (WEEK, 7200, 84), (MONTH, 21600, 120), (YEAR, 432000, 73)],
)
def test_bucket_table_cuts_each_window_into_whole_buckets(window: int, bucket: int, count: int) -> None:
    assert BUCKET_SECONDS[window] == bucket == bucket_seconds_for(window)
    assert buckets_per_window(window, bucket) == count
    assert count * bucket == window


@pytest.mark.parametrize("window", TABLE_WINDOWS)
def test_live_buckets_plus_bookkeeping_fit_a_listpack_hash(window: int) -> None:
    # n + 1 live buckets and the fields t, o, h, g: under hash-max-listpack-entries (128).
    assert buckets_per_window(window, bucket_seconds_for(window)) + 1 + 4 <= 128


def test_other_window_sizes_get_about_96_buckets_rounded_up() -> None:
    assert bucket_seconds_for(3600) == 38  # 3600 / 96 = 37.5
    assert buckets_per_window(3600, 38) == 95  # 95 * 38 = 3610 >= 3600: covers the window
    assert bucket_seconds_for(10) == 1
    with pytest.raises(ValueError):
        bucket_seconds_for(0)


def test_to_millis_floors() -> None:
    assert windows.to_millis(1.0009) == 1000
    assert windows.to_millis(1234.5) == 1_234_500


def test_live_range_is_current_bucket_and_n_before_it() -> None:
    now_ms = (1000 * 900 + 17) * 1000  # inside bucket 1000 of a Day, 17 s in
    assert bucket_index(now_ms, 900) == 1000
    assert oldest_live_index(now_ms, DAY, 900) == 1000 - 96


@given(t=times_ms, window=st.sampled_from(TABLE_WINDOWS))
def test_spend_ages_out_exactly_one_window_after_its_bucket_closes(t: int, window: int) -> None:
    bucket = bucket_seconds_for(window)
    i = bucket_index(t, bucket)
    out = ages_out_at_ms(i, window, bucket)
    assert out == (i + buckets_per_window(window, bucket) + 1) * bucket * 1000
    assert oldest_live_index(out - 1, window, bucket) <= i  # still live a ms before
    assert oldest_live_index(out, window, bucket) == i + 1  # gone at that instant


@given(t=times_ms, window=st.integers(min_value=1, max_value=40_000_000))
def test_spend_is_never_forgotten_before_a_whole_window(t: int, window: int) -> None:
    bucket = bucket_seconds_for(window)
    out = ages_out_at_ms(bucket_index(t, bucket), window, bucket)
    assert out - t >= window * 1000
    # ... and, for the table's windows (whole buckets), at most one bucket late.
    if window in BUCKET_SECONDS:
        assert out - t <= (window + bucket) * 1000


@given(t=times_ms, window=st.sampled_from(TABLE_WINDOWS), amount=amounts, data=st.data())
def test_reset_right_after_spending_is_between_window_and_window_plus_bucket(
    t: int, window: int, amount: int, data: st.DataObject
) -> None:
    bucket = bucket_seconds_for(window)
    limit = data.draw(st.integers(min_value=1, max_value=amount))
    reset = reset_seconds(
        spend=amount,
        held=0,
        limit=limit,
        buckets=[(bucket_index(t, bucket), amount)],
        earliest_hold_expiry_ms=None,
        now_ms=t,
        window_seconds=window,
        bucket_seconds=bucket,
    )
    assert window <= reset <= window + bucket


def test_reset_is_zero_under_the_limit_and_does_not_walk_buckets() -> None:
    def explode():  # a lazy bucket source that must not be consumed
        raise AssertionError("walked buckets while under the limit")
        yield (0, 0)

    assert (
        reset_seconds(
            spend=5,
            held=4,
            limit=10,
            buckets=explode(),
            earliest_hold_expiry_ms=None,
            now_ms=0,
            window_seconds=DAY,
            bucket_seconds=900,
        )
        == 0
    )


def test_reset_waits_for_as_many_old_buckets_as_it_takes() -> None:
    # Day window, buckets of 900 s: spend 3 in bucket 10, 3 in bucket 11, 3 in bucket 12.
    now_ms = 12 * 900_000 + 100_000
    common = dict(
        held=0,
        buckets=[(10, 3), (11, 3), (12, 3)],
        earliest_hold_expiry_ms=None,
        now_ms=now_ms,
        window_seconds=DAY,
        bucket_seconds=900,
    )
    # limit 9: dropping bucket 10 (at (10 + 97) * 900 s) is enough.
    assert reset_seconds(spend=9, limit=9, **common) == (107 * 900_000 - now_ms) // 1000
    # limit 4: buckets 10 and 11 must both go.
    assert reset_seconds(spend=9, limit=4, **common) == (108 * 900_000 - now_ms) // 1000
    # limit 1: all three.
    assert reset_seconds(spend=9, limit=1, **common) == (109 * 900_000 - now_ms) // 1000


def test_reset_rounds_partial_seconds_up() -> None:
    assert (
        reset_seconds(
            spend=1,
            held=0,
            limit=1,
            buckets=[(0, 1)],
            earliest_hold_expiry_ms=None,
            now_ms=97 * 900_000 - 1,  # 1 ms before bucket 0 ages out
            window_seconds=DAY,
            bucket_seconds=900,
        )
        == 1
    )


def test_reset_when_holds_alone_block_is_the_earliest_lease_expiry() -> None:
    assert (
        reset_seconds(
            spend=2,
            held=10,
            limit=10,
            buckets=[(5, 2)],
            earliest_hold_expiry_ms=50_500,
            now_ms=40_000,
            window_seconds=DAY,
            bucket_seconds=900,
        )
        == 11
    )
    # An already-due lease still answers at least one second.
    assert (
        reset_seconds(
            spend=0,
            held=10,
            limit=10,
            buckets=[],
            earliest_hold_expiry_ms=40_000,
            now_ms=40_000,
            window_seconds=DAY,
            bucket_seconds=900,
        )
        == 1
    )


@given(
    t=times_ms,
    window=st.sampled_from(TABLE_WINDOWS),
    spends=st.lists(st.tuples(st.integers(0, 200), amounts), min_size=1, max_size=20),
    data=st.data(),
)
def test_reset_is_never_early_and_at_most_window_plus_bucket(
    t: int, window: int, spends: list[tuple[int, int]], data: st.DataObject
) -> None:
    """Whatever the history: at now + reset the counter is under its limit, and one
    second earlier it was not (the answer is the first whole second that works)."""
    bucket = bucket_seconds_for(window)
    n = buckets_per_window(window, bucket)
    c = bucket_index(t, bucket)
    by_index: dict[int, int] = {}
    for back, amount in spends:
        index = c - min(back, n)
        by_index[index] = by_index.get(index, 0) + amount
    live = sorted(by_index.items())
    total = sum(by_index.values())
    limit = data.draw(st.integers(min_value=1, max_value=total))
    reset = reset_seconds(
        spend=total,
        held=0,
        limit=limit,
        buckets=live,
        earliest_hold_expiry_ms=None,
        now_ms=t,
        window_seconds=window,
        bucket_seconds=bucket,
    )

    def spend_at(ms: int) -> int:
        return sum(a for i, a in live if i >= oldest_live_index(ms, window, bucket))

    assert 1 <= reset <= window + bucket
    assert spend_at(t + reset * 1000) < limit
    assert spend_at(t + (reset - 1) * 1000) >= limit
