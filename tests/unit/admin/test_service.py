"""The admin API's small parts: who may call it, and how amounts are read."""

from __future__ import annotations

from decimal import Decimal

import pytest

from extproc.admin.service import _loopback, _page_start, _page_token, _units
from extproc.config.model import Action, BudgetEntry, Unit, Window

USD = BudgetEntry("ns", "b", "usd", Unit.USD, Decimal(5), Window.DAY, Action.BLOCK)
TOKENS = BudgetEntry("ns", "b", "tokens", Unit.TOKENS, Decimal(100), Window.DAY, Action.BLOCK)


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("unix:/tmp/extproc.sock", True),
        ("ipv4:10.0.0.7:5000", False),
        ("ipv6:[fe80::1]:5000", False),
        ("", False),
    ],
)
def test_without_a_token_only_loopback_peers_are_answered(peer: str, local: bool) -> None:
    assert _loopback(peer) is local


@pytest.mark.parametrize(
    ("entry", "text", "units"),
    [
        (USD, "0.5", 500_000_000),
        (USD, "0.000000001", 1),
        (USD, "0.0000000001", None),  # below a nano-dollar: not exact
        (USD, "-1", None),
        (USD, "0", None),
        (USD, "NaN", None),
        (USD, "five", None),
        (TOKENS, "40", 40),
        (TOKENS, "1.5", None),
    ],
)
def test_a_credit_is_a_positive_exact_amount_in_the_entrys_unit(
    entry: BudgetEntry, text: str, units: int | None
) -> None:
    assert _units(entry, text) == units


def test_page_tokens_round_trip_and_foreign_ones_are_refused() -> None:
    assert _page_start(_page_token(300)) == 300
    assert _page_start("not-a-token") is None
    assert _page_start(_page_token(-1)) is None
