"""What a model's price costs to look up: genai-prices cold vs the catalog's cache.

    python -m bench.catalog_lookup

A cold genai-prices lookup (model matching across every provider's rules) is far too
slow to pay per request; the catalog resolves each model once and then prices a call
with a dict lookup and a few Decimal products.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import data_snapshot

from extproc.catalog import Catalog, CatalogDocument, UserRates
from extproc.usage.model import Usage

MODELS = ("gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929", "gemini-2.5-pro", "o3", "no-such-model")
COLD_ROUNDS = 200
WARM_CALLS = 100_000

FIELD_REPORT = CatalogDocument(
    source="bench",
    providers={"openai": {"gpt-4o": UserRates(input=Decimal("2.50"), output=Decimal("10.00"))}},
)
USAGE = Usage(input_tokens=1_200, output_tokens=350, cached_input_tokens=800)


def cold_genai_prices(model: str) -> float:
    """µs for find_provider_model + get_prices on a snapshot that has never seen the model."""
    bundled = data_snapshot.get_snapshot()
    total = 0
    for _ in range(COLD_ROUNDS):
        fresh = data_snapshot.DataSnapshot(providers=bundled.providers, from_auto_update=False)
        start = time.perf_counter_ns()
        try:
            _, info = fresh.find_provider_model(model, None, None, None)
            info.get_prices(datetime.now(UTC))
        except LookupError:
            pass
        total += time.perf_counter_ns() - start
    return total / COLD_ROUNDS / 1_000


def cold_catalog(model: str) -> float:
    """µs for the first Catalog.price() of a model: the one-off resolution."""
    total = 0
    for _ in range(COLD_ROUNDS):
        catalog = Catalog([FIELD_REPORT])
        start = time.perf_counter_ns()
        catalog.price(USAGE, model)
        total += time.perf_counter_ns() - start
    return total / COLD_ROUNDS / 1_000


def warm_catalog(model: str) -> float:
    """µs per Catalog.price() once the model is cached."""
    catalog = Catalog([FIELD_REPORT])
    price: Callable[..., object] = catalog.price
    price(USAGE, model)
    start = time.perf_counter_ns()
    for _ in range(WARM_CALLS):
        price(USAGE, model)
    return (time.perf_counter_ns() - start) / WARM_CALLS / 1_000


def main() -> None:
    data_snapshot.get_snapshot()  # load the bundled data outside the timings
    print(f"{'model':<30} {'genai-prices cold':>18} {'catalog cold':>13} {'catalog cached':>15}  (µs/call)")
    for model in MODELS:
        status = Catalog([FIELD_REPORT]).price(USAGE, model).status.value
        print(
            f"{model:<30} {cold_genai_prices(model):>18.1f} {cold_catalog(model):>13.1f}"
            f" {warm_catalog(model):>15.2f}  [{status}]"
        )


if __name__ == "__main__":
    main()
