"""`extproc spend`: each budget entry and subject seen, with spend, limit, remaining and reset."""

from __future__ import annotations

from decimal import Decimal

from extproc.budgets import Charge
from extproc.catalog import format_usd
from extproc.config.model import NANOS_PER_USD, WILDCARD, BudgetEntry, Config, Unit
from extproc.service import counter_for
from extproc.store import open_store

Row = tuple[str, str, str, str, str, str, str, str, str]


def _amount(entry: BudgetEntry, units: int) -> str:
    if entry.unit is Unit.USD:
        return format_usd(Decimal(units) / NANOS_PER_USD)
    return str(units)


def _subject_values(counter_id: str) -> tuple[tuple[str, str], ...]:
    subject = counter_id.split("|", 1)[1] if "|" in counter_id else ""
    pairs = [p.split("=", 1) for p in subject.split(",") if "=" in p]
    return tuple((k, v) for k, v in pairs)


async def spend_table(config: Config, redis_url: str | None, now: float) -> list[Row]:
    store = open_store(redis_url)
    try:
        charges: list[Charge] = []
        for resource in config.budgets:
            for entry in resource.entries:
                exact = Charge(entry=entry, values=tuple(sorted(entry.subject.items())))
                if WILDCARD not in entry.subject.values():
                    charges.append(exact)
                    continue
                # A "*" entry has one allowance per value seen: list each one.
                prefix = exact.counter_id.split("|", 1)[0] + "|"
                for counter_id in sorted(await store.counters_seen(prefix)):
                    charges.append(Charge(entry=entry, values=_subject_values(counter_id)))
        counters = [counter_for(c) for c in charges]
        states = await store.read(counters, now) if counters else ()
        rows: list[Row] = []
        for charge, state in zip(charges, states, strict=True):
            e = charge.entry
            remaining = max(0, e.limit_units - state.spend - state.held)
            rows.append(
                (
                    e.budget_id,
                    ",".join(f"{k}={v}" for k, v in charge.values) or "-",
                    e.unit.value,
                    e.window.value,
                    e.action.value,
                    _amount(e, state.spend),
                    _amount(e, e.limit_units),
                    _amount(e, remaining),
                    str(state.reset_seconds),
                )
            )
        return rows
    finally:
        await store.close()
