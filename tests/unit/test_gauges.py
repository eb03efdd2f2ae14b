"""The per-budget gauges, refreshed from a real (in-memory) store and scraped."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest

from extproc.admission import Snapshot, counter_for
from extproc.budgets import Charge
from extproc.config.model import (
    Action,
    BudgetEntry,
    BudgetResource,
    Config,
    EnforcementPolicy,
    TargetRef,
    Unit,
    Window,
)
from extproc.gauges import BudgetGauges
from extproc.store import Claim, MemoryStore

PER_USER = BudgetEntry(
    "ns", "teams", "per-user", Unit.TOKENS, Decimal(1000), Window.DAY, Action.BLOCK, {"user": "*"}
)
ALL_USD = BudgetEntry("ns", "teams", "all-usd", Unit.USD, Decimal(5), Window.MONTH, Action.AUDIT)
CONFIG = Config(
    budgets=(BudgetResource("ns", "teams", (PER_USER, ALL_USD)),),
    policies=(EnforcementPolicy("ns", "p", (TargetRef("HTTPRoute", "r", "ns"),)),),
)


def charge(entry: BudgetEntry, **values: str) -> Charge:
    return Charge(entry=entry, values=tuple(sorted(values.items())))


def samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels.get("subject", "")] = sample.value
    return out


async def test_spend_limit_holds_utilization_in_the_entrys_unit() -> None:
    store = MemoryStore()
    now = time.time()
    await store.record([Claim(counter_for(charge(PER_USER, user="ann")), 250)], "r1", now)
    await store.admit([Claim(counter_for(charge(PER_USER, user="ann")), 50)], "h1", 60, now)
    await store.record([Claim(counter_for(charge(ALL_USD)), 1_250_000_000)], "r2", now)  # $1.25
    gauges = BudgetGauges(lambda: Snapshot(CONFIG), store, interval=60)
    registry = CollectorRegistry()
    registry.register(gauges)
    await gauges.refresh()
    assert samples(registry, "extproc_budget_spend") == {"user=ann": 250.0, "-": 1.25}
    assert samples(registry, "extproc_budget_held") == {"user=ann": 50.0, "-": 0.0}
    assert samples(registry, "extproc_budget_limit") == {"user=ann": 1000.0, "-": 5.0}
    assert samples(registry, "extproc_budget_remaining") == {"user=ann": 700.0, "-": 3.75}
    assert samples(registry, "extproc_budget_utilization") == {"user=ann": 0.3, "-": 0.25}
    text = generate_latest(registry).decode()
    labels = 'action="Audit",budget_id="ns/teams/all-usd",namespace="ns",subject="-",unit="USD"'
    assert f"extproc_budget_spend{{{labels}}} 1.25" in text  # dollars, not nano-dollars
    # Nothing burns yet: no time to exhaustion is projected.
    assert samples(registry, "extproc_budget_exhaustion_seconds") == {}


async def test_the_burn_rate_projects_a_time_to_exhaustion() -> None:
    store = MemoryStore()
    ann = counter_for(charge(PER_USER, user="ann"))
    now = time.time()
    await store.record([Claim(ann, 100)], "r1", now)
    gauges = BudgetGauges(lambda: Snapshot(CONFIG), store, interval=60)
    await gauges.refresh(now)
    await store.record([Claim(ann, 400)], "r2", now)
    gauges._previous = {k: (v[0], v[1] - 10.0, v[2]) for k, v in gauges._previous.items()}  # 10 s ago
    await gauges.refresh(now)
    (reading,) = [r for r in gauges.readings if r.labels[2] == "user=ann"]
    # 400 tokens in about 10 s, half of it taken the first time (smoothing): ~20 a second.
    assert 19 < reading.burn_per_second <= 20
    registry = CollectorRegistry()
    registry.register(gauges)
    (seconds,) = samples(registry, "extproc_budget_exhaustion_seconds").values()
    assert 25 <= seconds <= 27  # 500 left at ~20 a second


async def test_subjects_beyond_the_cap_are_counted_not_exported() -> None:
    store = MemoryStore()
    now = time.time()
    for user in ("ann", "bob", "cy"):
        await store.record([Claim(counter_for(charge(PER_USER, user=user)), 1)], user, now)
    gauges = BudgetGauges(lambda: Snapshot(CONFIG), store, interval=60, max_series=2)
    registry = CollectorRegistry()
    registry.register(gauges)
    await gauges.refresh()
    assert len(samples(registry, "extproc_budget_spend")) == 2
    assert registry.get_sample_value("extproc_budget_series_dropped") == 2  # cy and the USD entry


async def test_a_refresh_notifies_at_the_entrys_own_thresholds() -> None:
    from extproc.notify import Notifier, Webhook
    from tests.support.webhooks import Receiver

    own = dataclasses.replace(PER_USER, notify_at=(30,))
    config = dataclasses.replace(CONFIG, budgets=(BudgetResource("ns", "teams", (own, ALL_USD)),))
    store = MemoryStore()
    await spend_on(store, own, 400, user="ann")  # 40%: past its own 30, short of the default 50
    receiver = Receiver()
    notifier = Notifier(store, [Webhook(receiver.url)], registry=CollectorRegistry(), backoff_seconds=0.01)
    try:
        gauges = BudgetGauges(lambda: Snapshot(config), store, interval=60, notifier=notifier)
        await gauges.refresh()
        await gauges.refresh()  # again: claimed already, nothing more
        await notifier.drained()
        assert [(r.json()["subject"], r.json()["threshold"]) for r in receiver.requests] == [("user=ann", 30)]
    finally:
        await notifier.close()
        receiver.stop()


async def spend_on(store: MemoryStore, entry: BudgetEntry, amount: int, **values: str) -> None:
    await store.record([Claim(counter_for(charge(entry, **values)), amount)], "r", time.time())
