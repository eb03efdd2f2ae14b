"""Logs and metrics: one JSON line per event on stdout, Prometheus on the admin port.

Never log prompts or completions: only sizes, models, tokens and money.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("extproc")

# Distinct routes `extproc_unenforced_requests_total` names; any further one is counted
# under OTHER_ROUTES. Route names come from Envoy's configuration, yet a gateway with
# thousands of routes must not make thousands of series.
UNENFORCED_ROUTE_LABELS = 200
OTHER_ROUTES = "(other)"


_threshold = logging.INFO


def logs_info() -> bool:
    """Whether info lines are written: a hot path builds its line only then."""
    return _threshold <= logging.INFO


def _dumps(value: Any, **kwargs: Any) -> bytes:
    """orjson renders a request line in a fraction of the standard library's time; what it
    refuses (an integer beyond 64 bits from an upstream's usage) the standard library writes."""
    try:
        return orjson.dumps(value, **kwargs)
    except TypeError:
        return json.dumps(value, **kwargs).encode()


def configure_logging(level: str = "info") -> None:
    """JSON lines on stdout; the level names a threshold like the stdlib's."""
    global _threshold
    _threshold = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    # What the standard library logs (grpc, asyncio's "exception never retrieved", a
    # library's warning) comes out as the same JSON lines, never as plain text.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))


class Metrics:
    """Every metric the sidecar exports, on one registry (a test can make its own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "extproc_requests", "LLM requests seen, by route and outcome", ["route", "outcome"], registry=r
        )
        self.tokens = Counter(
            "extproc_tokens", "Tokens counted from responses", ["route", "model", "kind"], registry=r
        )
        self.cost_nanos = Counter(
            "extproc_cost_nano_usd", "Cost recorded, in nano-USD", ["route", "model"], registry=r
        )
        self.budget_exceeded = Counter(
            "extproc_budget_exceeded",
            "Entries found over their limit",
            ["budget_id", "action", "phase"],
            registry=r,
        )
        self.unpriced = Counter(
            "extproc_unpriced_model",
            "Responses whose model has no price (counted as $0)",
            ["model"],
            registry=r,
        )
        self.unparsed = Counter(
            "extproc_unparsed_requests",
            "Requests of an API no parser reads (admitted, spend unknown)",
            ["route"],
            registry=r,
        )
        self.estimated = Counter(
            "extproc_estimated_usage",
            "Responses without usage whose usage was estimated from sizes",
            ["route"],
            registry=r,
        )
        self.parse_problems = Counter(
            "extproc_parse_problems", "Bodies we could not read usage from", ["phase", "problem"], registry=r
        )
        self.errors = Counter(
            "extproc_internal_errors",
            "Exceptions caught in our code; the stream went on",
            ["phase"],
            registry=r,
        )
        self.store_errors = Counter(
            "extproc_store_errors", "Spend store calls that failed or timed out", ["operation"], registry=r
        )
        self.holds_released = Counter(
            "extproc_holds_released_unspent",
            "Holds released without usage (client gone, error reply, no usage)",
            ["reason"],
            registry=r,
        )
        self.streams = Gauge("extproc_active_streams", "ext_proc streams open now", registry=r)
        self._counted: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        messages = Counter(
            "extproc_messages",
            "ext_proc messages answered, by kind: each one Envoy waited for",
            ["kind"],
            registry=r,
        )
        # Bound once: the hot path increments a child, not a label lookup.
        self.messages = {
            kind: messages.labels(kind)
            for kind in (
                "request_headers",
                "request_body",
                "request_trailers",
                "response_headers",
                "response_body",
                "response_trailers",
            )
        }
        self.admission_seconds = Histogram(
            "extproc_admission_seconds",
            "Time spent deciding admission, store round trip included",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
            registry=r,
        )
        self.config_warnings = Gauge(
            "extproc_config_warnings",
            "In the running configuration: budgets no policy discovers (undiscovered_budget), "
            "policies that discover no budget (idle_policy)",
            ["warning"],
            registry=r,
        )
        self.config_reloads = Counter(
            "extproc_config_reloads", "Configuration reloads by result", ["result"], registry=r
        )
        # OpenTelemetry's GenAI client metrics, in Prometheus form (dots as underscores; the
        # duration in seconds), with the buckets its semantic conventions advise.
        self.gen_ai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per LLM call (OpenTelemetry gen_ai.client.token.usage)",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
            buckets=(
                1,
                4,
                16,
                64,
                256,
                1024,
                4096,
                16384,
                65536,
                262144,
                1048576,
                4194304,
                16777216,
                67108864,
            ),
            registry=r,
        )
        self.gen_ai_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "LLM call duration as the gateway saw it (OpenTelemetry gen_ai.client.operation.duration)",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"],
            buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
            registry=r,
        )
        self.cost_usd = UsdCounter(
            "extproc_cost_usd", "Cost recorded, in USD (summed exactly in nano-USD)", ["route", "model"]
        )
        r.register(self.cost_usd)
        self.unenforced = RouteCounter(
            "extproc_unenforced_requests",
            f"Requests on routes no policy enforces, by route (at most {UNENFORCED_ROUTE_LABELS}"
            f" routes; the rest as route={OTHER_ROUTES!r})",
        )
        r.register(self.unenforced)

    def count_unenforced(self, route: str) -> None:
        """One request on a route no policy enforces."""
        self.unenforced.inc(route)

    def count(
        self,
        route: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        nanos: int,
        *,
        operation: str = "",
        provider: str = "",
        request_model: str = "",
        seconds: float | None = None,
    ) -> None:
        """A counted request's series, their children looked up once per route, model,
        operation, provider and requested model."""
        key = (route, model, operation, provider, request_model)
        children = self._counted.get(key)
        if children is None:
            if len(self._counted) >= 4096:  # models come from requests: bounded
                self._counted.clear()
            gen_ai = (_operation_name(operation), provider, request_model)
            children = self._counted[key] = (
                self.requests.labels(route, "counted"),
                self.tokens.labels(route, model, "input"),
                self.tokens.labels(route, model, "output"),
                self.cost_nanos.labels(route, model),
                self.gen_ai_tokens.labels(*gen_ai, "input"),
                self.gen_ai_tokens.labels(*gen_ai, "output"),
                self.gen_ai_duration.labels(*gen_ai),
            )
        requests, inputs, outputs, cost, gen_ai_input, gen_ai_output, duration = children
        requests.inc()
        inputs.inc(input_tokens)
        outputs.inc(output_tokens)
        cost.inc(nanos)
        self.cost_usd.add((route, model), nanos)
        gen_ai_input.observe(input_tokens)
        gen_ai_output.observe(output_tokens)
        if seconds is not None:
            duration.observe(seconds)


# Series of `extproc_cost_usd` at most; beyond, the last label (the model) is OTHER_ROUTES.
_USD_SERIES = 4096
# The OpenTelemetry GenAI operation names of the APIs read here.
_OPERATION_NAMES = {
    "openai.chat": "chat",
    "openai.completions": "text_completion",
    "openai.embeddings": "embeddings",
    "openai.responses": "chat",
    "anthropic.messages": "chat",
    "gemini.generate": "generate_content",
    "bedrock.converse": "chat",
}


def _operation_name(api: str) -> str:
    return _OPERATION_NAMES.get(api, api)


class UsdCounter(Collector):
    """A counter of money kept as exact integer nano-USD per label set and shown in USD:
    the float Prometheus needs is made once, at scrape time, from the exact sum."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.nanos: dict[tuple[str, ...], int] = {}

    def add(self, labels: tuple[str, ...], nanos: int) -> None:
        if labels not in self.nanos and len(self.nanos) >= _USD_SERIES:
            labels = (*labels[:-1], OTHER_ROUTES)  # label values come from traffic: bounded
        self.nanos[labels] = self.nanos.get(labels, 0) + nanos

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels, unit="")
        for labels, nanos in self.nanos.items():
            family.add_metric(list(labels), nanos / 1_000_000_000)
        yield family


class RouteCounter(Collector):
    """A counter by route, kept as plain integers and made a metric only when scraped: the
    hot path pays a dict lookup and an add. At most `max_routes` routes are named; any
    further one is counted as OTHER_ROUTES."""

    def __init__(self, name: str, documentation: str, max_routes: int = UNENFORCED_ROUTE_LABELS) -> None:
        self.name, self.documentation, self.max_routes = name, documentation, max_routes
        self.counts: dict[str, int] = {}

    def inc(self, route: str) -> None:
        counts = self.counts
        if route in counts:
            counts[route] += 1
        elif len(counts) < self.max_routes:
            counts[route] = 1
        else:
            counts[OTHER_ROUTES] = counts.get(OTHER_ROUTES, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["route"])
        for route, count in self.counts.items():
            family.add_metric([route], count)
        yield family


class StoreStats(Collector):
    """The spend store's own figures (records not yet confirmed by Redis, the journal),
    read at scrape time from its `stats()`."""

    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "pending_records": ("gauge", "Records not yet confirmed by Redis, waiting to be sent again"),
        "retried_unknown_records": ("counter", "Records sent again after an unknown outcome"),
        "error_reply_records": (
            "counter",
            "Record attempts Redis answered with an error (OOM, script error)",
        ),
        "replayed_records": ("counter", "Records confirmed by Redis on a replay"),
        "duplicate_records": ("counter", "Counters on which a record arrived again and added nothing"),
        "journal_unacknowledged": ("gauge", "Records in the journal not yet confirmed"),
        "journal_bytes": ("gauge", "Size of the journal on disk"),
        "journal_full_records": ("counter", "Records not journaled because the journal was full"),
        "journal_bad_lines": ("counter", "Journal lines skipped as unreadable at start"),
        "journal_write_errors": ("counter", "Journal writes that failed (a full disk, say)"),
        "journal_recovered_records": ("gauge", "Unconfirmed records found in the journal at start"),
        "script_calls": ("counter", "Script calls sent to Redis (admissions, records, releases, reads)"),
        "round_trips": ("counter", "Writes those calls went in: calls made in one event-loop tick share one"),
        "reachable": ("gauge", "1 while Redis answered the last call (readiness does not depend on it)"),
        "replicas": ("gauge", "Replicas seen alive lately, sharing what remains of a budget in an outage"),
    }

    def __init__(self, store: object) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats()  # type: ignore[attr-defined]
        for name, value in stats.items():
            kind, text = self._HELP.get(name, ("gauge", name))
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"extproc_store_{name}", text, value=value)
