"""`extproc spend`: each budget entry and subject seen, with spend, limit, remaining and reset."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from extproc.admission import counter_for
from extproc.budgets import Charge, parse_subject
from extproc.catalog import format_usd
from extproc.config.model import NANOS_PER_USD, WILDCARD, BudgetEntry, Config, Unit
from extproc.store import CounterState, RedisAccess, SpendStore, StoreUnavailable, open_store

HEADER = ("BUDGET", "SUBJECT", "UNIT", "WINDOW", "ACTION", "SPEND", "LIMIT", "REMAINING", "RESET(s)")


class SpendUnavailable(Exception):
    """The spend could not be read: the store or the sidecar named is not reachable (or not
    named right). Its text is one line for the operator."""


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One entry and subject: what `extproc spend` prints and the admin `/spend` returns."""

    budget_id: str
    subject: str
    unit: str
    window: str
    action: str
    spend: str
    limit: str
    remaining: str
    reset_seconds: int

    def cells(self) -> tuple[str, ...]:
        """The table's cells; a reset of 0 (under its limit) reads "not blocked"."""
        values = [str(getattr(self, f)) for f in self.__slots__]  # type: ignore[attr-defined]
        if self.reset_seconds == 0:
            values[-1] = "not blocked"
        return tuple(values)

    def as_dict(self) -> dict[str, str | int]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


def amount_text(entry: BudgetEntry, units: int) -> str:
    """Units of an entry (nano-USD or tokens) as the exact decimal the operator reads."""
    if entry.unit is Unit.USD:
        return format_usd(Decimal(units) / NANOS_PER_USD)
    return str(units)


async def spend_table(
    config: Config, redis_url: str | None, now: float, access: RedisAccess | None = None
) -> list[SpendRow]:
    """The rows from the spend store at `redis_url` (a fresh in-memory store without one)."""
    try:
        store = open_store(redis_url, access=access, timeout_seconds=2.0)
    except ValueError as exc:  # no scheme, a scheme we do not speak
        raise SpendUnavailable(f"{redis_url!r} is not a Redis URL: {exc}") from None
    try:
        return await spend_rows(config, store, now)
    except StoreUnavailable as exc:
        raise SpendUnavailable(f"cannot read spend from {redis_url}: {exc}") from None
    finally:
        await store.close()


async def charges_seen(
    config: Config,
    store: SpendStore,
    *,
    budget_id: str = "",
    namespace: str = "",
    subject: Mapping[str, str] | None = None,
) -> list[Charge]:
    """Every entry of the configuration (or the one `budget_id` names, or a namespace's),
    and for `"*"` entries every subject seen, in a stable order; with `subject`, only the
    charges whose values include it."""
    charges: list[Charge] = []
    for resource in config.budgets:
        if namespace and resource.namespace != namespace:
            continue
        for entry in resource.entries:
            if budget_id and entry.budget_id != budget_id:
                continue
            exact = Charge(entry=entry, values=tuple(sorted(entry.subject.items())))
            if WILDCARD not in entry.subject.values():
                charges.append(exact)
                continue
            # A "*" entry has one allowance per value seen: list each one.
            prefix = exact.counter_id.split("|", 1)[0] + "|"
            for counter_id in sorted(await store.counters_seen(prefix)):
                charges.append(Charge(entry=entry, values=parse_subject(counter_id)))
    if subject:
        wanted = set(subject.items())
        charges = [c for c in charges if wanted <= set(c.values)]
    return charges


async def spend_rows(config: Config, store: SpendStore, now: float) -> list[SpendRow]:
    """Every entry of the configuration, and for `"*"` entries every subject seen."""
    charges = await charges_seen(config, store)
    counters = [counter_for(c) for c in charges]
    states = await store.read(counters, now) if counters else ()
    rows: list[SpendRow] = []
    for charge, state in zip(charges, states, strict=True):
        e = charge.entry
        rows.append(
            SpendRow(
                budget_id=e.budget_id,
                subject=charge.subject_text,
                unit=e.unit.value,
                window=e.window.value,
                action=e.action.value,
                spend=amount_text(e, state.spend),
                limit=amount_text(e, e.limit_units),
                remaining=amount_text(e, remaining(e, state)),
                reset_seconds=state.reset_seconds,
            )
        )
    return rows


def remaining(entry: BudgetEntry, state: CounterState) -> int:
    return max(0, entry.limit_units - state.spend - state.held)


def fetch_rows(admin_url: str, timeout: float = 5.0) -> list[SpendRow]:
    """The rows a running sidecar reports on its admin address (`GET /spend`)."""
    url = admin_url.rstrip("/") + "/spend"
    if not url.startswith(("http://", "https://")):
        raise SpendUnavailable(f"{admin_url!r} is not a sidecar's admin URL: give http://HOST:9090")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return [SpendRow(**row) for row in json.load(response)]
    except urllib.error.HTTPError as exc:
        raise SpendUnavailable(f"the sidecar at {admin_url} answered {exc.code}: {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SpendUnavailable(f"cannot reach the sidecar at {admin_url}: {reason}") from None
    except (ValueError, TypeError) as exc:
        raise SpendUnavailable(f"the sidecar at {admin_url} did not answer spend rows: {exc}") from None
