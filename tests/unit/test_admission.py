"""The admission core on plain data: no protobuf, no Envoy, decisions to look at."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from extproc.admission import UNAVAILABLE, Admission, Blocked, Enforcer, RouteContext, Snapshot
from extproc.catalog import CatalogDocument, UserRates
from extproc.config.model import (
    Action,
    BudgetEntry,
    BudgetResource,
    Config,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
    Unit,
    Window,
)
from extproc.store import Claim, Counter, FailoverStore, Journal, MemoryStore, StoreUnavailable
from extproc.telemetry import Metrics
from extproc.usage import LlmRequest, Usage
from extproc.usage.api import ApiCall
from extproc.usage.response import Reading

CATALOG = CatalogDocument(
    source="test",
    providers={"openai": {"gpt-4o": UserRates(input=Decimal("2.50"), output=Decimal("10.00"))}},
)
REQUEST = LlmRequest(model="gpt-4o", max_tokens=100, estimated_input_tokens=20)


def config(failure_mode: FailureMode = FailureMode.CLOSED, *entries: BudgetEntry) -> Config:
    entries = entries or (
        BudgetEntry("ns", "demo", "usd", Unit.USD, Decimal(5), Window.DAY, Action.AUDIT),
        BudgetEntry("ns", "demo", "tokens", Unit.TOKENS, Decimal(2000), Window.DAY, Action.BLOCK),
    )
    policy = EnforcementPolicy("ns", "p", (TargetRef("HTTPRoute", "r", "ns"),), failure_mode=failure_mode)
    return Config(budgets=(BudgetResource("ns", "demo", entries),), policies=(policy,), catalogs=(CATALOG,))


def context(cfg: Config) -> RouteContext:
    snapshot = Snapshot(cfg)
    budgets = snapshot.index.for_route("r", "")
    assert budgets is not None
    return RouteContext(
        snapshot=snapshot,
        route="r",
        gateway="",
        budgets=budgets,
        headers={},
        attributes={},
        metadata={},
        call=ApiCall("openai.chat", "openai"),
        provider="openai",
    )


def reading(usage: Usage | None, body_bytes: int = 100) -> Reading:
    return Reading(usage, None, None if usage else "stream ended without usage", 200, body_bytes, True)


class Unreachable:
    """A store whose every call fails as an unreachable Redis's does."""

    async def admit(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")

    record = release = read = admit

    async def heartbeat(self, *args: Any) -> int:
        raise StoreUnavailable("connection refused")

    async def close(self) -> None:
        pass


async def test_an_admission_holds_each_entrys_estimate_in_its_own_unit() -> None:
    enforcer = Enforcer(MemoryStore(), Metrics())
    decision = await enforcer.admit(context(config()), REQUEST)
    assert isinstance(decision, Admission) and decision.holding
    usd, tokens = decision.holds
    assert tokens.amount == 120  # 20 estimated input + 100 max_tokens
    assert usd.amount == 20 * 2_500 + 100 * 10_000  # nano-USD: $2.50 and $10 per million
    assert [hold.counter.id for hold in decision.holds] == [c.counter_id for c in decision.charges]


async def test_the_blocked_decision_names_the_entry_that_frees_up_last() -> None:
    day = BudgetEntry("ns", "demo", "day", Unit.TOKENS, Decimal(10), Window.DAY, Action.BLOCK)
    week = BudgetEntry("ns", "demo", "week", Unit.TOKENS, Decimal(10), Window.WEEK, Action.BLOCK)
    store = MemoryStore()
    enforcer = Enforcer(store, Metrics())
    ctx = context(config(FailureMode.CLOSED, day, week))
    first = await enforcer.admit(ctx, REQUEST)
    assert isinstance(first, Admission)
    await store.record([Claim(h.counter, 50) for h in first.holds], first.hold_id, time.time())
    decision = await enforcer.admit(ctx, REQUEST)
    assert isinstance(decision, Blocked)
    assert decision.charge.entry.name == "week"
    assert decision.state.over_limit and decision.state.reset_seconds > 86_400


@pytest.mark.parametrize("mode", [FailureMode.CLOSED, FailureMode.OPEN])
async def test_an_unreachable_store_is_the_routes_failure_mode_to_decide(mode: FailureMode) -> None:
    metrics = Metrics()
    enforcer = Enforcer(Unreachable(), metrics)  # type: ignore[arg-type]
    decision = await enforcer.admit(context(config(mode)), REQUEST)
    if mode is FailureMode.CLOSED:
        assert decision is UNAVAILABLE
    else:
        # No local view to admit on: admitted, holding nothing.
        assert isinstance(decision, Admission) and not decision.holding and decision.charges
    assert metrics.store_errors.labels("admit")._value.get() == 1


async def test_an_open_route_is_admitted_on_the_failover_stores_local_view() -> None:
    store = FailoverStore(Unreachable(), local=MemoryStore(), retry_after_seconds=60)  # type: ignore[arg-type]
    metrics = Metrics()
    enforcer = Enforcer(store, metrics)
    try:
        decision = await enforcer.admit(context(config(FailureMode.OPEN)), REQUEST)
        assert isinstance(decision, Admission) and decision.holding  # held locally
        assert metrics.store_errors.labels("admit")._value.get() == 1
        assert await enforcer.admit(context(config(FailureMode.CLOSED)), REQUEST) is UNAVAILABLE
    finally:
        await store.close()


async def test_a_cut_stream_is_charged_an_estimate_capped_by_its_hold() -> None:
    store = MemoryStore()
    enforcer = Enforcer(store, Metrics())
    ctx = context(config())
    admission = await enforcer.admit(ctx, REQUEST)
    assert isinstance(admission, Admission)
    spend = await enforcer.account(ctx, admission, reading(None, body_bytes=40_000), cut=True)
    assert spend is not None and spend.estimated
    assert (spend.usage.input_tokens, spend.usage.output_tokens) == (20, 100)  # not 10,000
    tokens = admission.holds[1].counter
    assert [s.spend for s in await store.read([tokens], time.time())] == [120]


async def test_no_usage_releases_the_holds_and_charges_nothing() -> None:
    store = MemoryStore()
    enforcer = Enforcer(store, Metrics())
    ctx = context(config())
    admission = await enforcer.admit(ctx, REQUEST)
    assert isinstance(admission, Admission)
    assert await enforcer.account(ctx, admission, reading(None)) is None
    assert not admission.holding
    states = await store.read(_counters(admission.holds), time.time())
    assert [(s.spend, s.held) for s in states] == [(0, 0), (0, 0)]


def _counters(claims: Sequence[Claim]) -> list[Counter]:
    return [claim.counter for claim in claims]


class Hanging(Unreachable):
    """A store that never answers a record (Redis hung)."""

    async def admit(self, *args: Any, **kwargs: Any) -> Any:
        return await MemoryStore().admit(*args, **kwargs)

    async def record(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()


async def test_a_record_is_in_the_journal_before_the_reply_that_ends_its_exchange(tmp_path: Path) -> None:
    """The reply goes when `account` returns: by then the record is journaled, so a process
    killed right after the reply replays it; only its round trip to Redis waits."""
    journal = Journal(tmp_path)
    store = FailoverStore(Hanging(), local=MemoryStore(), journal=journal, recovered=journal.open())  # type: ignore[arg-type]
    enforcer = Enforcer(store, Metrics())
    ctx = context(config())
    try:
        admission = await enforcer.admit(ctx, REQUEST)
        assert isinstance(admission, Admission)
        spend = await enforcer.account(ctx, admission, reading(Usage(input_tokens=10, output_tokens=5)))
        assert spend is not None
        assert journal.unacknowledged == 1  # no tick has passed for the send
        await journal.close()
        again = Journal(tmp_path)
        (recovered,) = again.open()
        assert [c.amount for c in recovered.claims] == [spend.price.nanos, 15]
        await again.close()
    finally:
        await store.close()
