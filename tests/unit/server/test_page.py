"""The spend page's HTML from a real (in-memory) store: rows, bars, filters, pages, escaping."""

from __future__ import annotations

import re
import time
from decimal import Decimal

from extproc.admission import BlockedRequest, counter_for
from extproc.budgets import Charge
from extproc.config.model import Action, BudgetEntry, BudgetResource, Config, Unit, Window
from extproc.server.page import PAGE_ROWS, duration, render
from extproc.store import Claim, MemoryStore

PER_USER = BudgetEntry(
    "team-a", "teams", "per-user", Unit.TOKENS, Decimal(1000), Window.DAY, Action.BLOCK, {"user": "*"}
)
TEAM_USD = BudgetEntry(
    "team-b", "money", "ml", Unit.USD, Decimal(5), Window.MONTH, Action.AUDIT, {"team": "ml"}
)
CONFIG = Config(
    budgets=(BudgetResource("team-a", "teams", (PER_USER,)), BudgetResource("team-b", "money", (TEAM_USD,)))
)


async def spend(store: MemoryStore, entry: BudgetEntry, amount: int, **values: str) -> None:
    charge = Charge(entry=entry, values=tuple(sorted(values.items())))
    await store.record([Claim(counter_for(charge), amount)], f"r{time.monotonic_ns()}", time.time())


def rows(page: bytes) -> list[str]:
    body = page.decode().split('<table id="budgets">')[1].split("</table>")[0]
    return re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>")[1])


async def test_each_subject_has_its_bar_its_reset_and_when_it_runs_out() -> None:
    store = MemoryStore()
    await spend(store, PER_USER, 500, user="ann")
    await spend(store, PER_USER, 1000, user="bob")
    await spend(store, TEAM_USD, 4_500_000_000, team="ml")  # $4.50 of $5
    blocks = [BlockedRequest(time.time(), "team-a/teams/per-user", "user=bob", "budget-demo")]
    page = await render(
        CONFIG, store, {}, exhaustion={("team-a/teams/per-user", "user=ann"): 5400.0}, blocks=blocks
    )
    ann, bob, team = rows(page)
    assert "user=ann" in ann and 'style="width:50.0%"' in ann and "500 of 1000 Tokens (50%)" in ann
    assert "not blocked" in ann and "1 h 30 min" in ann  # runs out in 5,400 s at its burn rate
    assert 'class="bar over"' in bob and 'class="blocked"' in bob  # at its limit: when it frees up
    assert 'class="bar warn"' in team and "4.5 of 5 USD (90%)" in team and "not blocked" in team  # Audit
    blocked = page.decode().split('<table id="blocks">')[1]
    assert "team-a/teams/per-user" in blocked and "user=bob" in blocked and "budget-demo" in blocked
    assert "<script" not in page.decode() and "http" not in page.decode().split("<body>")[0]  # no assets


async def test_a_namespace_with_thousands_of_subjects_is_read_a_page_at_a_time() -> None:
    store = MemoryStore()
    for i in range(2 * PAGE_ROWS + 50):
        await spend(store, PER_USER, 1, user=f"u{i:04d}")
    first = await render(CONFIG, store, {"namespace": "team-a"})
    assert len(rows(first)) == PAGE_ROWS and "page 1 of 3" in first.decode()
    assert 'href="?namespace=team-a&amp;page=2"' in first.decode()
    last = await render(CONFIG, store, {"namespace": "team-a", "page": "3"})
    assert len(rows(last)) == 50 and "u0249" in last.decode() and "next" not in last.decode()
    beyond = await render(CONFIG, store, {"namespace": "team-a", "page": "99"})
    assert "page 3 of 3" in beyond.decode()  # a page past the end shows the last
    assert len(rows(await render(CONFIG, store, {"page": "junk"}))) == PAGE_ROWS


async def test_filters_by_namespace_and_team() -> None:
    store = MemoryStore()
    await spend(store, PER_USER, 5, user="ann")
    await spend(store, TEAM_USD, 1, team="ml")
    (only,) = rows(await render(CONFIG, store, {"team": "ml"}))
    assert "team-b/money/ml" in only
    assert len(rows(await render(CONFIG, store, {"namespace": "team-a"}))) == 1
    assert "No budget matches" in (await render(CONFIG, store, {"namespace": "nobody"})).decode()


async def test_subject_values_from_clients_are_escaped() -> None:
    store = MemoryStore()
    await spend(store, PER_USER, 5, user="<script>alert(1)</script>")
    page = (await render(CONFIG, store, {"team": '"><b>'})).decode()
    assert "<script>alert" not in page and '"><b>' not in page
    page = (await render(CONFIG, store, {})).decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_durations_read_as_an_operator_reads_them() -> None:
    assert [duration(s) for s in (None, 45, 720, 11_520, 187_200)] == [
        "—",
        "45 s",
        "12 min",
        "3 h 12 min",
        "2 d 4 h",
    ]
