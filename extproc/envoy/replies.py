"""The replies a decision becomes: the budget's 429 and the unavailable store's 503."""

from __future__ import annotations

import json

from extproc.admission import Blocked, limit_text
from extproc.config.model import Unit
from extproc.envoy import wire
from extproc.envoy.wire import ProcessingResponse


def budget_exceeded(blocked: Blocked) -> ProcessingResponse:
    e = blocked.charge.entry
    reset = str(max(1, blocked.state.reset_seconds))
    limit = limit_text(blocked.charge)
    unit = "USD" if e.unit is Unit.USD else "tokens"
    message = (
        f"Budget {e.budget_id} exceeded: limit {limit} {unit} per {e.window.value.lower()}"
        f" (rolling). Retry in {reset} seconds."
    )
    body = json.dumps(
        {"error": {"message": message, "type": "budget_exceeded", "param": None, "code": "budget_exceeded"}}
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-ratelimit-limit": limit,
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": reset,
        "retry-after": reset,
        "x-budget-id": e.budget_id,
    }
    return wire.immediate(429, headers, body, f"budget_exceeded:{e.budget_id}")


_UNAVAILABLE_BODY = json.dumps(
    {
        "error": {
            "message": "Budget enforcement is unavailable (spend store unreachable); failure mode Closed.",
            "type": "budget_store_unavailable",
            "param": None,
            "code": "budget_store_unavailable",
        }
    }
).encode()
# The same for every request: built once.
STORE_UNAVAILABLE = wire.immediate(
    503,
    {"content-type": "application/json", "retry-after": "1"},
    _UNAVAILABLE_BODY,
    "budget_store_unavailable",
)
