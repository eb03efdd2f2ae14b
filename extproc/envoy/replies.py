"""The replies a decision becomes: the budget's 429 and the unavailable store's 503, and
what an admitted request tells Envoy for its response (the RateLimit fields).

The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers, its latest syntax) name the
entry by its budget id: `RateLimit-Policy: "ID";q=LIMIT;w=WINDOW` and `RateLimit:
"ID";r=REMAINING;t=SECONDS`. Quotas are integers: tokens, or USD in millionths (micro-USD).
"""

from __future__ import annotations

import json

from google.protobuf.struct_pb2 import Struct

from extproc.admission import Admission, Blocked, Quota, limit_text
from extproc.budgets import Charge
from extproc.config.model import NANOS_PER_USD, Unit
from extproc.envoy import wire
from extproc.envoy.wire import ProcessingResponse

METADATA_NAMESPACE = "extproc.budgets"
# A client need not wait longer than this for a budget to free up: beyond it, the 429 says
# `x-should-retry: false` (read by the OpenAI and Anthropic SDKs), so a client that ignores
# a long Retry-After does not retry at once a request that cannot succeed for hours.
RETRY_WORTH_SECONDS = 60
_NANOS_PER_MICRO = NANOS_PER_USD // 1_000_000


def _quota_units(charge: Charge, units: int) -> int:
    return units // _NANOS_PER_MICRO if charge.entry.unit is Unit.USD else units


def _sf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rate_limit_fields(quota: Quota) -> tuple[str, str]:
    """(RateLimit-Policy, RateLimit) for one entry."""
    charge = quota.charge
    name = _sf_string(charge.entry.budget_id)
    policy = f"{name};q={_quota_units(charge, charge.entry.limit_units)};w={charge.entry.window.seconds}"
    return policy, f"{name};r={_quota_units(charge, quota.remaining)};t={max(0, quota.reset_seconds)}"


def admitted(reply: ProcessingResponse, admission: Admission) -> ProcessingResponse:
    """The admission's reply, carrying its RateLimit fields as dynamic metadata for Envoy to
    add to the response (`response_headers_to_add` with `%DYNAMIC_METADATA(...)%`: no
    response message is needed for it). The shared replies are copied, never changed."""
    if admission.quota is None:
        return reply
    policy, limit = rate_limit_fields(admission.quota)
    out = ProcessingResponse()
    out.CopyFrom(reply)
    out.dynamic_metadata.CopyFrom(
        wire.metadata_struct(METADATA_NAMESPACE, {"ratelimit_policy": policy, "ratelimit": limit})
    )
    return out


def blocked_metadata(blocked: Blocked) -> Struct:
    """What Envoy's access log can read of a blocked request."""
    return wire.metadata_struct(
        METADATA_NAMESPACE, {"budget_id": blocked.charge.entry.budget_id, "outcome": "blocked"}
    )


def budget_exceeded(blocked: Blocked) -> ProcessingResponse:
    e = blocked.charge.entry
    reset_seconds = max(1, blocked.state.reset_seconds)
    reset = str(reset_seconds)
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
    headers["ratelimit-policy"], headers["ratelimit"] = rate_limit_fields(
        Quota(blocked.charge, 0, reset_seconds)
    )
    if reset_seconds > RETRY_WORTH_SECONDS:
        headers["x-should-retry"] = "false"
    reply = wire.immediate(429, headers, body, f"budget_exceeded:{e.budget_id}")
    reply.dynamic_metadata.CopyFrom(blocked_metadata(blocked))
    return reply


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
