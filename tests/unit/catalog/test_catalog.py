"""The cost catalog: layering, lookup order and status, exact pricing, caching."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, localcontext

import pytest
from genai_prices import data_snapshot
from genai_prices import types as genai_types
from hypothesis import given
from hypothesis import strategies as st

import extproc.catalog.catalog as catalog_module
from extproc.catalog import (
    Catalog,
    CatalogDocument,
    LookupStatus,
    Price,
    Rates,
    UserRates,
    UserTier,
    components_text,
    format_usd,
)
from extproc.usage.model import Usage

D = Decimal

# The catalog ConfigMap of the field report, verbatim in meaning.
FIELD_REPORT = CatalogDocument(
    source="agentgateway-system/model-cost-catalog/catalog.json",
    providers={
        "openai": {
            "gpt-4o": UserRates(input=D("2.50"), output=D("10.00")),
            "gpt-4o-mini": UserRates(input=D("0.15"), output=D("0.60")),
        }
    },
)


def doc(source: str, providers: dict[str, dict[str, UserRates]]) -> CatalogDocument:
    return CatalogDocument(source=source, providers=providers)


class SnapshotSpy:
    """Counts how often genai-prices' data is consulted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = data_snapshot.get_snapshot

        def counting() -> data_snapshot.DataSnapshot:
            self.calls += 1
            return real()

        monkeypatch.setattr(data_snapshot, "get_snapshot", counting)


# --- the field report ---------------------------------------------------------------


def test_field_report_call_costs_exactly_what_the_gateway_logged() -> None:
    catalog = Catalog([FIELD_REPORT])

    price = catalog.price(Usage(input_tokens=21, output_tokens=683), "gpt-4o-2024-08-06")

    assert price.usd == D("0.0068825")
    assert price.nanos == 6_882_500
    assert price.status is LookupStatus.EXACT
    assert (price.provider, price.model) == ("openai", "gpt-4o")
    assert format_usd(price.usd) == "0.0068825"


def test_summary_counts_user_providers_and_models() -> None:
    assert Catalog([FIELD_REPORT]).summary == (1, 2)
    assert Catalog().summary == (0, 0)


# --- layering -------------------------------------------------------------------------


def test_user_entry_overrides_builtin() -> None:
    silly = doc("silly", {"openai": {"gpt-4o": UserRates(input=D("1000"), output=D("0"))}})

    price = Catalog([silly]).price(Usage(input_tokens=1000, output_tokens=1000), "gpt-4o")

    assert price.usd == D("1")
    assert price.status is LookupStatus.EXACT


def test_user_entry_replaces_builtin_whole_so_builtin_cache_rate_is_not_used() -> None:
    # Built-in gpt-4o has a cacheRead of 1.25; the user's entry omits it, so cached
    # tokens fall back to the user's input rate, not the built-in cache rate.
    catalog = Catalog([doc("user", {"openai": {"gpt-4o": UserRates(input=D("3"), output=D("12"))}})])

    price = catalog.price(Usage(input_tokens=1_000_000, cached_input_tokens=400_000), "gpt-4o")

    assert price.components["cached_input"] == D("1.2")
    assert price.usd == D("3")


def test_later_document_wins_over_earlier() -> None:
    first = doc("first", {"openai": {"gpt-4o": UserRates(input=D("1"), output=D("1"))}})
    second = doc("second", {"openai": {"gpt-4o": UserRates(input=D("7"), output=D("7"))}})

    rates, status, _, _ = Catalog([first, second]).rates("gpt-4o")

    assert rates is not None
    assert rates.input == D("7")
    assert status is LookupStatus.EXACT


def test_omitted_user_rates_fall_back_so_as_never_to_under_count() -> None:
    catalog = Catalog([doc("user", {"acme": {"m": UserRates(input=D("2"), output=D("8"))}})])

    rates, _, _, _ = catalog.rates("m")

    assert rates == Rates(D("2"), output=D("8"), cache_read=D("2"), cache_write=D("2"), reasoning=D("8"))


def test_stated_user_rates_are_used() -> None:
    rates = UserRates(D("2"), D("8"), cache_read=D("0.5"), cache_write=D("2.5"), reasoning=D("9"))
    catalog = Catalog([doc("user", {"acme": {"m": rates}})])
    usage = Usage(
        input_tokens=1_000_000,
        cached_input_tokens=200_000,
        cache_creation_input_tokens=300_000,
        output_tokens=1_000_000,
        reasoning_tokens=100_000,
    )

    price = catalog.price(usage, "m")

    assert dict(price.components) == {
        "input": D("1"),  # 500k uncached at 2
        "cached_input": D("0.1"),
        "cache_write": D("0.75"),
        "output": D("7.2"),  # 900k non-reasoning at 8
        "reasoning": D("0.9"),
    }
    assert price.usd == sum(price.components.values())


def test_user_model_and_provider_names_match_case_insensitively() -> None:
    catalog = Catalog([doc("user", {"OpenAI": {"GPT-4o": UserRates(input=D("1"), output=D("1"))}})])

    assert catalog.rates("gpt-4O", "OPENAI")[1:] == (LookupStatus.EXACT, "openai", "gpt-4o")


# --- lookup order ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response_model", "entry"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ],
)
def test_dated_release_prices_as_its_user_entry(response_model: str, entry: str) -> None:
    rates = UserRates(input=D("1"), output=D("1"))
    catalog = Catalog([doc("user", {"p": {"gpt-4o": rates, "claude-3-5-sonnet": rates}})])

    assert catalog.rates(response_model)[1:] == (LookupStatus.EXACT, "p", entry)


def test_only_a_date_suffix_is_stripped() -> None:
    catalog = Catalog([doc("user", {"p": {"gpt-4": UserRates(input=D("1"), output=D("1"))}})], builtin=False)

    assert catalog.rates("gpt-4-0613")[1] is LookupStatus.UNPRICED
    assert catalog.rates("gpt-4-turbo")[1] is LookupStatus.UNPRICED


def test_exact_user_name_beats_the_undated_one() -> None:
    catalog = Catalog(
        [
            doc(
                "user",
                {
                    "p": {
                        "gpt-4o": UserRates(input=D("1"), output=D("1")),
                        "gpt-4o-2024-05-13": UserRates(input=D("5"), output=D("15")),
                    }
                },
            )
        ]
    )

    rates, _, _, model = catalog.rates("gpt-4o-2024-05-13")

    assert rates is not None and rates.input == D("5")
    assert model == "gpt-4o-2024-05-13"


def test_user_lookup_with_a_provider_stays_within_it() -> None:
    catalog = Catalog([doc("user", {"openai": {"gpt-4o": UserRates(input=D("99"), output=D("99"))}})])

    rates, status, provider, _ = catalog.rates("gpt-4o", "azure")

    assert status is LookupStatus.BUILTIN
    assert provider == "azure"
    assert rates is not None and rates.input == D("2.5")
    assert catalog.rates("gpt-4o", "openai")[1] is LookupStatus.EXACT


def test_user_lookup_without_a_provider_takes_the_first_provider_listing_it() -> None:
    first = doc("first", {"alpha": {"m": UserRates(input=D("1"), output=D("1"))}})
    second = doc(
        "second",
        {"beta": {"m": UserRates(input=D("2"), output=D("2"))}, "alpha": {"n": UserRates(D("3"), D("3"))}},
    )

    assert Catalog([first, second]).rates("m")[2] == "alpha"


def test_builtin_lookup_with_an_unknown_provider_retries_without_it() -> None:
    rates, status, provider, model = Catalog().rates("gpt-4o", "my-corporate-proxy")

    assert (status, provider, model) == (LookupStatus.BUILTIN, "openai", "gpt-4o")
    assert rates is not None


@pytest.mark.parametrize(
    ("ours", "theirs"), [("bedrock", "aws"), ("azure_openai", "azure"), ("vertex", "google")]
)
def test_provider_names_map_to_genai_prices_ids(ours: str, theirs: str) -> None:
    model = {"aws": "amazon.nova-pro-v1:0", "azure": "gpt-4o", "google": "gemini-2.5-pro"}[theirs]

    assert Catalog().rates(model, ours)[2] == theirs


def test_builtin_can_be_switched_off() -> None:
    assert Catalog(builtin=False).price(Usage(input_tokens=10), "gpt-4o").status is LookupStatus.UNPRICED


# --- built-in prices ------------------------------------------------------------------


def test_builtin_gpt_4o_prices_cached_input_at_its_cache_rate() -> None:
    price = Catalog().price(Usage(input_tokens=1_000_000, cached_input_tokens=1_000_000), "gpt-4o")

    assert price.usd == D("1.25")
    assert (price.status, price.provider, price.model) == (LookupStatus.BUILTIN, "openai", "gpt-4o")


def test_builtin_missing_cache_write_and_reasoning_fall_back_to_input_and_output() -> None:
    rates, _, _, _ = Catalog().rates("gpt-4o")

    assert rates is not None
    assert rates.cache_write == rates.input == D("2.5")
    assert rates.reasoning == rates.output == D("10")


def test_builtin_fallback_rates_follow_the_long_context_tier() -> None:
    # gemini-2.5-pro states no cache-write rate: it falls back to the input rate of each tier.
    rates, _, _, _ = Catalog().rates("gemini-2.5-pro", "google")

    assert rates is not None
    assert rates.cache_write == D("1.25")
    assert rates.for_input(200_001).cache_write == D("2.5")
    assert rates.for_input(200_000) is rates


@pytest.mark.parametrize("bad", [D("-1"), D("NaN"), D("Infinity")])
def test_rates_reject_negative_or_non_finite_values(bad: Decimal) -> None:
    with pytest.raises(ValueError, match="finite non-negative"):
        Rates(input=bad, output=D(1), cache_read=D(1), cache_write=D(1), reasoning=D(1))


def test_anthropic_cache_reads_and_writes_price_at_their_rates() -> None:
    usage = Usage(
        input_tokens=10_000, cached_input_tokens=4_000, cache_creation_input_tokens=2_000, output_tokens=1_000
    )

    price = Catalog().price(usage, "claude-sonnet-4-5-20250929", "anthropic")

    # 4k uncached at $3, 4k read at $0.30, 2k written at $3.75, 1k out at $15.
    assert price.usd == D("0.0357")
    assert price.components["cached_input"] == D("0.0012")
    assert price.components["cache_write"] == D("0.0075")
    assert price.status is LookupStatus.BUILTIN


def test_long_context_tier_applies_above_200k_input_tokens() -> None:
    catalog = Catalog()

    at_threshold = catalog.price(Usage(input_tokens=200_000, output_tokens=1_000), "claude-sonnet-4-5")
    above = catalog.price(Usage(input_tokens=250_000, output_tokens=1_000), "claude-sonnet-4-5")

    assert at_threshold.usd == D("0.615")  # 200k at $3 + 1k at $15
    assert above.usd == D("1.5225")  # the whole call at $6 / $22.50


def test_long_context_tier_counts_cached_input_towards_the_threshold() -> None:
    usage = Usage(input_tokens=250_000, cached_input_tokens=240_000)

    price = Catalog().price(usage, "claude-sonnet-4-5")

    assert price.components["cached_input"] == D("0.144")  # 240k at the tier's $0.60


# --- long-context tiers in the user's catalog ----------------------------------------

# Claude Sonnet 4.5 as a user would state it: the numbers genai-prices bundles.
SONNET_TIERED = UserRates(
    input=D("3"),
    output=D("15"),
    cache_read=D("0.30"),
    cache_write=D("3.75"),
    tiers=(UserTier(200_000, D("6.00"), D("22.50"), cache_read=D("0.60"), cache_write=D("7.50")),),
)


def test_user_tier_applies_to_the_whole_call_once_input_exceeds_its_threshold() -> None:
    catalog = Catalog([doc("user", {"anthropic": {"claude-sonnet-4-5": SONNET_TIERED}})], builtin=False)

    at_threshold = catalog.price(Usage(input_tokens=200_000, output_tokens=1_000), "claude-sonnet-4-5")
    above = catalog.price(Usage(input_tokens=200_001, output_tokens=1_000), "claude-sonnet-4-5")

    assert at_threshold.usd == D("0.615")  # 200k at $3 + 1k at $15
    assert above.usd == D("1.222506")  # 200,001 at $6 + 1k at $22.50
    assert above.status is LookupStatus.EXACT


def test_user_tier_counts_cached_and_written_input_towards_the_threshold() -> None:
    catalog = Catalog([doc("user", {"anthropic": {"claude-sonnet-4-5": SONNET_TIERED}})], builtin=False)
    usage = Usage(
        input_tokens=250_000,
        output_tokens=2_000,
        cached_input_tokens=200_000,
        cache_creation_input_tokens=40_000,
    )

    price = catalog.price(usage, "claude-sonnet-4-5")

    assert dict(price.components) == {
        "input": D("0.06"),  # 10k at $6
        "cached_input": D("0.12"),  # 200k at $0.60
        "cache_write": D("0.3"),  # 40k at $7.50
        "output": D("0.045"),  # 2k at $22.50
        "reasoning": D(0),
    }
    assert price.usd == D("0.525")


@pytest.mark.parametrize(
    "usage",
    [
        Usage(input_tokens=199_999, output_tokens=10, cached_input_tokens=100_000),
        Usage(input_tokens=200_000, output_tokens=10, cache_creation_input_tokens=200_000),
        Usage(input_tokens=200_001, output_tokens=7, cached_input_tokens=1, cache_creation_input_tokens=2),
        Usage(input_tokens=1_000_000, output_tokens=64_000, reasoning_tokens=60_000),
    ],
)
def test_user_tiers_price_as_genai_prices_tiers_do(usage: Usage) -> None:
    user = Catalog([doc("user", {"anthropic": {"claude-sonnet-4-5": SONNET_TIERED}})], builtin=False)

    assert user.price(usage, "claude-sonnet-4-5").usd == Catalog().price(usage, "claude-sonnet-4-5").usd


def test_a_tiers_omitted_rates_fall_back_to_that_tiers_input_and_output() -> None:
    rates = UserRates(
        D("3"), D("15"), cache_read=D("0.30"), reasoning=D("20"), tiers=(UserTier(1000, D("6"), D("30")),)
    )

    filled = Rates.from_user(rates)

    # Not the base cacheRead or reasoning: a long-context call is never priced below its tier.
    assert filled.tiers == ((1000, Rates(D("6"), D("30"), D("6"), D("6"), D("30"))),)
    assert filled.for_input(1001) == Rates(D("6"), D("30"), D("6"), D("6"), D("30"))


def test_a_stated_zero_rate_is_kept_not_taken_for_omitted() -> None:
    zero = D("0")
    rates = UserRates(
        D("3"), D("15"), zero, zero, zero, tiers=(UserTier(10, D("6"), D("30"), zero, zero, zero),)
    )

    filled = Rates.from_user(rates)

    assert filled == Rates(
        D("3"), D("15"), zero, zero, zero, ((10, Rates(D("6"), D("30"), zero, zero, zero)),)
    )


def test_the_highest_tier_exceeded_applies_and_tiers_are_sorted() -> None:
    rates = UserRates(
        D("1"), D("1"), tiers=(UserTier(500_000, D("4"), D("4")), UserTier(100_000, D("2"), D("2")))
    )
    catalog = Catalog([doc("user", {"p": {"m": rates}})], builtin=False)

    filled, _, _, _ = catalog.rates("m")

    assert filled is not None
    assert [threshold for threshold, _ in filled.tiers] == [100_000, 500_000]
    assert catalog.price(Usage(input_tokens=100_000), "m").usd == D("0.1")
    assert catalog.price(Usage(input_tokens=100_001), "m").usd == D("0.200002")
    assert catalog.price(Usage(input_tokens=500_000), "m").usd == D("1")
    assert catalog.price(Usage(input_tokens=500_001), "m").usd == D("2.000004")


@pytest.mark.parametrize(
    ("tiers", "reason"),
    [
        (((5, "b"), (5, "b")), "distinct ascending"),
        (((9, "b"), (5, "b")), "distinct ascending"),
        (((-1, "b"),), "distinct ascending"),
        (((True, "b"),), "distinct ascending"),
        (((5, "nested"),), "tiers of their own"),
    ],
)
def test_rates_reject_tiers_that_for_input_could_not_walk(
    tiers: tuple[tuple[object, str], ...], reason: str
) -> None:
    flat = Rates(D(1), D(1), D(1), D(1), D(1))
    nested = Rates(D(1), D(1), D(1), D(1), D(1), ((1, flat),))
    made = tuple((threshold, nested if kind == "nested" else flat) for threshold, kind in tiers)

    with pytest.raises(ValueError, match=reason):
        Rates(D(1), D(1), D(1), D(1), D(1), made)  # type: ignore[arg-type]


# --- cost components --------------------------------------------------------------------


def test_components_text_gives_each_non_zero_component_as_plain_usd() -> None:
    rates = UserRates(D("2.50"), D("10.00"), cache_read=D("1.25"))
    catalog = Catalog([doc("user", {"openai": {"o3": rates}})], builtin=False)
    usage = Usage(input_tokens=1_000, output_tokens=500, cached_input_tokens=400, reasoning_tokens=300)

    price = catalog.price(usage, "o3")

    assert components_text(price) == {
        "input": "0.0015",  # 600 uncached at $2.50
        "cached_input": "0.0005",  # 400 at $1.25
        "output": "0.002",  # 200 non-reasoning at $10
        "reasoning": "0.003",  # 300 at $10
    }
    assert price.usd == D("0.007")


def test_components_text_of_an_unpriced_call_is_empty() -> None:
    price = Catalog(builtin=False).price(Usage(input_tokens=10, output_tokens=10), "nobody-knows")

    assert price.status is LookupStatus.UNPRICED
    assert components_text(price) == {}
    assert dict(price.components) == dict.fromkeys(
        ("input", "cached_input", "cache_write", "output", "reasoning"), D(0)
    )


@pytest.mark.parametrize(
    ("model", "usage"),
    [
        ("gpt-4o", Usage(input_tokens=12_345, cached_input_tokens=2_345, output_tokens=678)),
        ("gpt-4o-mini", Usage(input_tokens=1, output_tokens=1)),
        ("claude-sonnet-4-5", Usage(250_000, 500, 1_000, 2_000)),
        ("claude-3-5-sonnet", Usage(9_999, 10, 3_000, 4_000)),
        ("gemini-2.5-pro", Usage(input_tokens=300_000, cached_input_tokens=100_000, output_tokens=5)),
    ],
)
def test_builtin_prices_agree_with_genai_prices_own_calculation(model: str, usage: Usage) -> None:
    theirs = data_snapshot.get_snapshot().calc(
        genai_types.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_creation_input_tokens,
            output_tokens=usage.output_tokens,
        ),
        model,
        None,
        None,
        datetime.now(UTC),
    )

    assert Catalog().price(usage, model).usd == theirs.total_price


def test_builtin_time_of_day_prices_are_picked_at_pricing_time() -> None:
    catalog = Catalog()
    off_peak = datetime(2026, 1, 1, 17, 0, tzinfo=UTC)  # DeepSeek's discount window
    peak = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    discounted = catalog.rates("deepseek-chat", "deepseek", at=off_peak)[0]
    standard = catalog.rates("deepseek-chat", "deepseek", at=peak)[0]

    assert discounted is not None and standard is not None
    assert discounted.input < standard.input


# --- unknown and missing --------------------------------------------------------------


def test_unknown_model_is_unpriced_at_zero() -> None:
    price = Catalog([FIELD_REPORT]).price(Usage(input_tokens=1_000, output_tokens=1_000), "no-such-model-xyz")

    assert price == Price(usd=D(0), nanos=0, status=LookupStatus.UNPRICED, components=price.components)
    assert set(price.components.values()) == {D(0)}


@pytest.mark.parametrize("model", [None, "", "   "])
def test_no_model_name_is_missing(model: str | None) -> None:
    price = Catalog([FIELD_REPORT]).price(Usage(input_tokens=1_000), model)

    assert (price.usd, price.nanos, price.status) == (D(0), 0, LookupStatus.MISSING)
    assert Catalog().rates(model) == (None, LookupStatus.MISSING, None, None)


# --- caching --------------------------------------------------------------------------


def test_each_model_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog()
    spy = SnapshotSpy(monkeypatch)

    for _ in range(100):
        catalog.price(Usage(input_tokens=10, output_tokens=10), "gpt-4o")
        catalog.price(Usage(input_tokens=10, output_tokens=10), "GPT-4o ")

    assert spy.calls == 1


def test_misses_are_cached_too(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog()
    spy = SnapshotSpy(monkeypatch)

    for _ in range(10):
        price = catalog.price(Usage(input_tokens=10), "no-such-model-2024-01-01")
        assert price.status is LookupStatus.UNPRICED

    assert spy.calls == 1


def test_user_entries_never_consult_genai_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog([FIELD_REPORT])
    spy = SnapshotSpy(monkeypatch)

    catalog.price(Usage(input_tokens=10), "gpt-4o-2024-08-06")

    assert spy.calls == 0


def test_lookups_are_cached_per_provider() -> None:
    catalog = Catalog([FIELD_REPORT])

    assert catalog.rates("gpt-4o", "openai")[1] is LookupStatus.EXACT
    assert catalog.rates("gpt-4o", "azure")[1] is LookupStatus.BUILTIN


def test_cache_is_bounded_against_invented_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "_CACHE_LIMIT", 8)
    catalog = Catalog(builtin=False)

    for n in range(100):
        catalog.price(Usage(input_tokens=1), f"invented-{n}")

    assert len(catalog._cache) <= 8


# --- arithmetic properties ------------------------------------------------------------

rates_strategy = st.builds(
    UserRates,
    input=st.decimals(min_value=0, max_value=1_000, places=6),
    output=st.decimals(min_value=0, max_value=1_000, places=6),
    cache_read=st.none() | st.decimals(min_value=0, max_value=1_000, places=6),
    cache_write=st.none() | st.decimals(min_value=0, max_value=1_000, places=6),
    reasoning=st.none() | st.decimals(min_value=0, max_value=1_000, places=6),
)


@st.composite
def consistent_usage(draw: st.DrawFn) -> Usage:
    """Usage as parsers produce it: cached counts within input, reasoning within output."""
    cached = draw(st.integers(0, 10**9))
    written = draw(st.integers(0, 10**9))
    uncached = draw(st.integers(0, 10**9))
    reasoning = draw(st.integers(0, 10**9))
    output = reasoning + draw(st.integers(0, 10**9))
    return Usage(uncached + cached + written, output, cached, written, reasoning)


any_usage = st.builds(
    Usage,
    input_tokens=st.integers(-(10**6), 10**12),
    output_tokens=st.integers(-(10**6), 10**12),
    cached_input_tokens=st.integers(-(10**6), 10**12),
    cache_creation_input_tokens=st.integers(-(10**6), 10**12),
    reasoning_tokens=st.integers(-(10**6), 10**12),
)


def add(a: Usage, b: Usage) -> Usage:
    return Usage(
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cached_input_tokens + b.cached_input_tokens,
        a.cache_creation_input_tokens + b.cache_creation_input_tokens,
        a.reasoning_tokens + b.reasoning_tokens,
    )


def user_catalog(rates: UserRates) -> Catalog:
    return Catalog([doc("user", {"p": {"m": rates}})], builtin=False)


@given(rates_strategy, any_usage)
def test_cost_is_never_negative_and_nanos_round_up_by_less_than_one(rates: UserRates, usage: Usage) -> None:
    price = user_catalog(rates).price(usage, "m")

    with localcontext(prec=1000):
        billionths = price.usd * 10**9
    assert price.usd >= 0
    assert price.nanos >= billionths
    assert price.nanos - billionths < 1
    assert price.usd == sum(price.components.values())


rate = st.decimals(min_value=0, max_value=1_000, places=6)


@st.composite
def tiered_rates(draw: st.DrawFn) -> UserRates:
    """User rates with up to three long-context tiers, in any order."""
    base = draw(rates_strategy)
    thresholds = draw(st.lists(st.integers(1, 10**9), max_size=3, unique=True))
    tiers = tuple(
        UserTier(
            threshold,
            draw(rate),
            draw(rate),
            draw(st.none() | rate),
            draw(st.none() | rate),
            draw(st.none() | rate),
        )
        for threshold in thresholds
    )
    return UserRates(base.input, base.output, base.cache_read, base.cache_write, base.reasoning, tiers)


def flat(rates: Rates) -> UserRates:
    return UserRates(rates.input, rates.output, rates.cache_read, rates.cache_write, rates.reasoning)


@given(tiered_rates(), any_usage)
def test_tiered_cost_is_exact_and_its_components_sum_to_it(rates: UserRates, usage: Usage) -> None:
    price = user_catalog(rates).price(usage, "m")

    with localcontext(prec=1000):
        billionths = price.usd * 10**9
    assert price.usd >= 0
    assert 0 <= price.nanos - billionths < 1
    assert price.usd == sum(price.components.values())
    assert components_text(price) == {
        name: format_usd(amount) for name, amount in price.components.items() if amount != 0
    }


@given(tiered_rates(), consistent_usage())
def test_a_tiered_call_costs_what_its_tier_would_charge_as_flat_rates(rates: UserRates, usage: Usage) -> None:
    # The reference: pick the tier by hand, the highest threshold the input exceeds.
    exceeded = [tier for tier in rates.tiers if usage.input_tokens > tier.input_tokens_above]
    chosen = max(exceeded, key=lambda tier: tier.input_tokens_above, default=None)
    expected_rates = (
        Rates.from_user(rates)
        if chosen is None
        else Rates.from_user(
            UserRates(chosen.input, chosen.output, chosen.cache_read, chosen.cache_write, chosen.reasoning)
        )
    )

    price = user_catalog(rates).price(usage, "m")

    assert price == user_catalog(flat(expected_rates)).price(usage, "m")


@given(rates_strategy, consistent_usage(), consistent_usage())
def test_cost_is_additive_in_usage(rates: UserRates, a: Usage, b: Usage) -> None:
    catalog = user_catalog(rates)

    assert catalog.price(add(a, b), "m").usd == catalog.price(a, "m").usd + catalog.price(b, "m").usd


@given(rates_strategy, consistent_usage(), consistent_usage())
def test_cost_is_monotone_in_tokens(rates: UserRates, a: Usage, more: Usage) -> None:
    catalog = user_catalog(rates)

    assert catalog.price(add(a, more), "m").usd >= catalog.price(a, "m").usd


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**6))
def test_builtin_tiered_cost_is_monotone_in_input_tokens(base: int, extra: int, output: int) -> None:
    catalog = Catalog()
    smaller = catalog.price(Usage(input_tokens=base, output_tokens=output), "claude-sonnet-4-5")
    larger = catalog.price(Usage(input_tokens=base + extra, output_tokens=output), "claude-sonnet-4-5")

    assert larger.usd >= smaller.usd >= 0


# --- format_usd -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (D("0.0068825"), "0.0068825"),
        (D("0.00688250"), "0.0068825"),
        (D(0), "0"),
        (D("0E-8"), "0"),
        (D("-0.00"), "0"),
        (D("1E+2"), "100"),
        (D("5.000"), "5"),
        (D("1E-12"), "0.000000000001"),
        (D("12345678901234567890.123456789012345678901"), "12345678901234567890.123456789012345678901"),
    ],
)
def test_format_usd_is_plain_and_normalised(amount: Decimal, text: str) -> None:
    assert format_usd(amount) == text
