"""Per budget entry and subject gauges to alert on: spend, limit, holds, utilization, the
burn rate and the time to exhaustion it projects.

Read from the store in the background (every `interval` seconds), never at scrape time and
never on a request's path: a scrape serves the last reading. At most `max_series` entry and
subject pairs are exported (`"*"` entries have one per subject seen: that is where
cardinality comes from); the rest are counted in `extproc_budget_series_dropped`. Amounts
are in their entry's unit: USD (not nano-USD) or tokens, the `unit` label says which. With
several replicas each exports the same shared figures: aggregate with `max by`.

The burn rate is the spend added per second between two readings, smoothed (half of each
new reading); spend that aged out or was credited is not negative burn. Time to exhaustion
is what remains divided by it (absent while nothing burns).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.admission import Snapshot, counter_for
from extproc.budgets import Charge
from extproc.config.model import NANOS_PER_USD, BudgetEntry, Unit
from extproc.notify import Crossing, Notifier
from extproc.spend import charges_seen, remaining
from extproc.store import CounterState, SpendStore, StoreUnavailable
from extproc.telemetry import log

LABELS = ["budget_id", "namespace", "subject", "unit", "action"]
_SMOOTHING = 0.5
# Counters read per store call.
_READ_BATCH = 200


@dataclass(frozen=True, slots=True)
class Reading:
    labels: tuple[str, ...]
    spend: float
    limit: float
    held: float
    remaining: float
    burn_per_second: float
    reset_seconds: int

    @property
    def utilization(self) -> float:
        """(spend + held) / limit: 1 is the limit (a limit of 0 is always at it)."""
        return (self.spend + self.held) / self.limit if self.limit > 0 else 1.0


def _text(value: float) -> str:
    """A gauge's value as an amount in a notification: no float noise (0.1 + 0.2)."""
    return format(Decimal(repr(value)).normalize(), "f")


def _value(entry: BudgetEntry, units: int) -> float:
    """Store units as the entry's unit: USD from exact nano-USD, or tokens."""
    if entry.unit is Unit.USD:
        return float(Decimal(units) / NANOS_PER_USD)
    return float(units)


class BudgetGauges(Collector):
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        store: SpendStore,
        *,
        interval: float = 15.0,
        max_series: int = 1000,
        notifier: Notifier | None = None,
    ) -> None:
        self.snapshot = snapshot  # the live configuration's, read at each refresh
        self.store = store
        self.interval = interval
        self.max_series = max_series
        # Told of every reading at or over a threshold (threshold notifications).
        self.notifier = notifier
        self.readings: list[Reading] = []
        self.dropped = 0
        self.refreshes = 0
        self.last_refresh_seconds = 0.0
        # counter id -> (spend in store units, monotonic time, smoothed burn per second)
        self._previous: dict[str, tuple[int, float, float]] = {}
        self._logged_dropped = 0

    async def run(self) -> None:
        """Refresh forever (the app's task; cancelled at shutdown)."""
        while True:
            with contextlib.suppress(StoreUnavailable):  # the last reading stays; the store says why
                await self.refresh()
            await asyncio.sleep(self.interval)

    async def refresh(self, now: float | None = None) -> None:
        started = time.perf_counter()
        charges = await charges_seen(self.snapshot().config, self.store)
        kept, dropped = charges[: self.max_series], max(0, len(charges) - self.max_series)
        counters = [counter_for(c) for c in kept]
        states: list[CounterState] = []
        for start in range(0, len(counters), _READ_BATCH):
            # In batches: no one long script holds Redis, and requests run in between.
            chunk = counters[start : start + _READ_BATCH]
            states += await self.store.read(chunk, time.time() if now is None else now)
        clock = time.monotonic()
        previous, readings = self._previous, []
        current: dict[str, tuple[int, float, float]] = {}
        for charge, counter, state in zip(kept, counters, states, strict=True):
            entry = charge.entry
            burn = 0.0
            before = previous.get(counter.id)
            if before is not None and clock > before[1]:
                added = max(0, state.spend - before[0]) / (clock - before[1])
                burn = before[2] + _SMOOTHING * (added - before[2])
            current[counter.id] = (state.spend, clock, burn)
            subject = charge.subject_text
            readings.append(
                Reading(
                    labels=(entry.budget_id, entry.namespace, subject, entry.unit.value, entry.action.value),
                    spend=_value(entry, state.spend),
                    limit=_value(entry, entry.limit_units),
                    held=_value(entry, state.held),
                    remaining=_value(entry, remaining(entry, state)),
                    burn_per_second=_value(entry, round(burn)) if entry.unit is Unit.USD else burn,
                    reset_seconds=state.reset_seconds,
                )
            )
        self._previous = current
        self.readings, self.dropped = readings, dropped
        if self.notifier is not None:
            await self._notify(kept, readings)
        self.refreshes += 1
        self.last_refresh_seconds = time.perf_counter() - started
        if dropped and dropped != self._logged_dropped:
            log.warning("budget gauges capped", series=len(kept), dropped=dropped, max_series=self.max_series)
        self._logged_dropped = dropped

    async def _notify(self, charges: list[Charge], readings: list[Reading]) -> None:
        notifier = self.notifier
        assert notifier is not None
        at = time.time()
        for charge, reading in zip(charges, readings, strict=True):
            e = charge.entry
            thresholds = e.notify_at or notifier.thresholds
            utilization = reading.utilization
            if not thresholds or utilization * 100 < thresholds[0]:
                continue
            crossing = Crossing(
                budget_id=e.budget_id,
                subject=reading.labels[2],
                threshold=0,
                utilization=utilization,
                spend=_text(reading.spend),
                limit=_text(reading.limit),
                unit=e.unit.value,
                window=e.window.value,
                action=e.action.value,
                at=at,
            )
            await notifier.observe(crossing, e.window.seconds, e.notify_at)

    def collect(self) -> Iterator[Metric]:
        families = {
            "spend": GaugeMetricFamily(
                "extproc_budget_spend",
                "Spend in the entry's window, in its unit (USD or tokens)",
                labels=LABELS,
            ),
            "limit": GaugeMetricFamily(
                "extproc_budget_limit", "The entry's limit, in its unit", labels=LABELS
            ),
            "held": GaugeMetricFamily(
                "extproc_budget_held", "Held by requests in flight, in the entry's unit", labels=LABELS
            ),
            "remaining": GaugeMetricFamily(
                "extproc_budget_remaining", "Limit minus spend and holds, at least 0", labels=LABELS
            ),
            "utilization": GaugeMetricFamily(
                "extproc_budget_utilization", "(spend + held) / limit: 1 is the limit", labels=LABELS
            ),
            "burn": GaugeMetricFamily(
                "extproc_budget_burn_rate",
                "Spend added per second lately, in the entry's unit",
                labels=LABELS,
            ),
            "exhaustion": GaugeMetricFamily(
                "extproc_budget_exhaustion_seconds",
                "Seconds until the limit at the current burn rate (absent while nothing burns)",
                labels=LABELS,
            ),
            "reset": GaugeMetricFamily(
                "extproc_budget_reset_seconds",
                "Seconds until back under the limit (0 while under)",
                labels=LABELS,
            ),
        }
        for r in self.readings:
            labels = list(r.labels)
            families["spend"].add_metric(labels, r.spend)
            families["limit"].add_metric(labels, r.limit)
            families["held"].add_metric(labels, r.held)
            families["remaining"].add_metric(labels, r.remaining)
            families["utilization"].add_metric(labels, r.utilization)
            families["burn"].add_metric(labels, r.burn_per_second)
            if r.burn_per_second > 0:
                families["exhaustion"].add_metric(labels, r.remaining / r.burn_per_second)
            families["reset"].add_metric(labels, r.reset_seconds)
        yield from families.values()
        yield GaugeMetricFamily(
            "extproc_budget_series_dropped",
            "Entry and subject pairs over --budget-gauges-max-series at the last refresh",
            value=self.dropped,
        )
        yield GaugeMetricFamily(
            "extproc_budget_gauges_refresh_seconds",
            "How long the last refresh of these gauges took (store reads included)",
            value=self.last_refresh_seconds,
        )
