"""Logs and metrics: one JSON line per event on stdout, Prometheus on the admin port.

Never log prompts or completions: only sizes, models, tokens and money.
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = structlog.get_logger("extproc")


def configure_logging(level: str = "info") -> None:
    """JSON lines on stdout; the level names a threshold like the stdlib's."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )


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
        self.admission_seconds = Histogram(
            "extproc_admission_seconds",
            "Time spent deciding admission, store round trip included",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
            registry=r,
        )
        self.config_reloads = Counter(
            "extproc_config_reloads", "Configuration reloads by result", ["result"], registry=r
        )
