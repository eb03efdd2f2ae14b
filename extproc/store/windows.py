"""Trailing-window arithmetic: buckets, ageing out and the seconds until reset.

Pure functions over integers, shared by the in-memory store and mirrored line for
line by the Lua scripts (`_window.lua`), so both backends agree to the millisecond.

The model. A window of `window` seconds is cut into buckets of `b` seconds; spend at
time t lands in bucket ``i = floor(t / b)``. With ``n = ceil(window / b)`` buckets per
window, the window at time `now` is the current bucket ``c = floor(now / b)`` plus the
`n` before it: live indexes ``[c - n, c]``. Spend in bucket `i` therefore counts until
``(i + n + 1) * b``:

- never forgotten early: spend made at t still counts at ``t + window`` (it ages out at
  least `window` seconds after it was made), so the window never under-counts;
- forgotten at most one bucket late: it ages out no later than ``t + window + b``.

That one bucket is the documented granularity (a Day forgets in 15-minute steps). Time
is handled in integer milliseconds: a float `now` is floored to ms once, at the edge,
exactly as the Redis scripts receive it, so no float rounding can split the backends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

DAY = 86_400
WEEK = 7 * DAY
MONTH = 30 * DAY
YEAR = 365 * DAY

# window_seconds -> bucket_seconds. A Redis hash keeps its compact listpack encoding up
# to 128 fields: n + 1 live buckets plus 4 bookkeeping fields (t, o, h, g) stay under it
# (the Month, at 121 + 4, is the tightest).
BUCKET_SECONDS: dict[int, int] = {
    DAY: 900,  # 96 buckets of 15 minutes
    WEEK: 7_200,  # 84 buckets of 2 hours
    MONTH: 21_600,  # 120 buckets of 6 hours
    YEAR: 432_000,  # 73 buckets of 5 days
}

# For window sizes outside the table: about this many buckets per window.
FALLBACK_BUCKETS_PER_WINDOW = 96


def bucket_seconds_for(window_seconds: int) -> int:
    """The bucket size for a window: the table above, else window/96 rounded up."""
    if window_seconds <= 0:
        raise ValueError(f"window must be positive, got {window_seconds}")
    known = BUCKET_SECONDS.get(window_seconds)
    if known is not None:
        return known
    return -(-window_seconds // FALLBACK_BUCKETS_PER_WINDOW)


def buckets_per_window(window_seconds: int, bucket_seconds: int) -> int:
    """n: rounded up, so n buckets always cover the whole window (never under-count)."""
    return -(-window_seconds // bucket_seconds)


def to_millis(t: float) -> int:
    """Seconds (float, as the store interface takes them) -> whole milliseconds."""
    return math.floor(t * 1000)


def bucket_index(now_ms: int, bucket_seconds: int) -> int:
    return now_ms // (bucket_seconds * 1000)


def oldest_live_index(now_ms: int, window_seconds: int, bucket_seconds: int) -> int:
    """c - n: buckets with a lower index have aged out at `now_ms`."""
    return bucket_index(now_ms, bucket_seconds) - buckets_per_window(window_seconds, bucket_seconds)


def ages_out_at_ms(index: int, window_seconds: int, bucket_seconds: int) -> int:
    """When spend in bucket `index` stops counting: (i + n + 1) * b, in ms."""
    n = buckets_per_window(window_seconds, bucket_seconds)
    return (index + n + 1) * bucket_seconds * 1000


def retention_ms(window_seconds: int, bucket_seconds: int) -> int:
    """How long a freshly written bucket can stay live: (n + 1) * b, the key TTL floor."""
    return (buckets_per_window(window_seconds, bucket_seconds) + 1) * bucket_seconds * 1000


def ceil_seconds(ms: int) -> int:
    """Whole seconds, rounded up: a client told to wait this long is never early."""
    return -(-ms // 1000)


def reset_seconds(
    *,
    spend: int,
    held: int,
    limit: int,
    buckets: Iterable[tuple[int, int]],
    earliest_hold_expiry_ms: int | None,
    now_ms: int,
    window_seconds: int,
    bucket_seconds: int,
) -> int:
    """Whole seconds until spend + held drops below `limit`; 0 when already below.

    `buckets` are the live (index, amount) pairs, oldest first; they are only walked when
    over the limit, so a caller can pass a lazy iterable and stay O(1) when under it.
    Removing buckets up to and including index i happens at (i + n + 1) * b. If the
    holds alone keep the counter at or over the limit, the answer is the wait until
    the earliest hold's lease expires. Always >= 1 when over the limit.
    """
    remaining = spend + held
    if remaining < limit:
        return 0
    for index, amount in buckets:
        remaining -= amount
        if remaining < limit:
            return max(1, ceil_seconds(ages_out_at_ms(index, window_seconds, bucket_seconds) - now_ms))
    if earliest_hold_expiry_ms is not None:
        return max(1, ceil_seconds(earliest_hold_expiry_ms - now_ms))
    # Only a limit <= 0 gets here (config rejects those): nothing ageing out can help, so
    # answer the longest wait the contract allows rather than 0 ("not limited").
    return ceil_seconds(retention_ms(window_seconds, bucket_seconds))
