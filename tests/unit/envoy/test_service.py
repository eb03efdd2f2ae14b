"""The ext_proc conversation, message by message, with real wire types and the memory store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

import pytest
import structlog.testing
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.admission import Blocked, Snapshot, counter_for
from extproc.budgets import Charge
from extproc.catalog import CatalogDocument, UserRates
from extproc.config.model import (
    Action,
    BudgetEntry,
    BudgetResource,
    Config,
    Dimension,
    DimensionSource,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
    Unit,
    Window,
    frozen_map,
)
from extproc.envoy import replies, wire
from extproc.envoy.service import BudgetService, Exchange
from extproc.server.grpc import ExternalProcessor
from extproc.store import Claim, CounterState, MemoryStore, StoreUnavailable
from extproc.telemetry import OTHER_ROUTES, UNENFORCED_ROUTE_LABELS, Metrics

CATALOG = CatalogDocument(
    source="test",
    providers={"openai": {"gpt-4o": UserRates(input=Decimal("2.50"), output=Decimal("10.00"))}},
)


def demo_config(action: Action = Action.BLOCK) -> Config:
    entries = (
        BudgetEntry("ns", "demo", "usd-audit", Unit.USD, Decimal(5), Window.DAY, Action.AUDIT),
        BudgetEntry("ns", "demo", "token-block", Unit.TOKENS, Decimal(2000), Window.DAY, action),
    )
    policy = EnforcementPolicy("ns", "p", (TargetRef("HTTPRoute", "budget-demo", "ns"),))
    return Config(budgets=(BudgetResource("ns", "demo", entries),), policies=(policy,), catalogs=(CATALOG,))


def headers_msg(
    kind: str, headers: dict[str, str], route: str | None = None, eos: bool = False
) -> pb.ProcessingRequest:
    hm = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    msg = pb.ProcessingRequest(**{kind: pb.HttpHeaders(headers=hm, end_of_stream=eos)})
    if route is not None:
        msg.attributes["envoy.filters.http.ext_proc"].update({"xds.route_name": route})
    return msg


def body_msg(kind: str, body: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(**{kind: pb.HttpBody(body=body, end_of_stream=eos)})


def request_body(**extra: Any) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def response_body(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return json.dumps({"model": "gpt-4o-2024-08-06", "choices": [], "usage": usage}).encode()


@pytest.fixture()
def service() -> BudgetService:
    return BudgetService(Snapshot(demo_config()), MemoryStore(), Metrics())


async def exchange(
    service: BudgetService, prompt: int, completion: int, route: str = "budget-demo"
) -> list[pb.ProcessingResponse]:
    ex = Exchange()
    replies = [
        await service.handle(ex, headers_msg("request_headers", {":path": "/v1/chat/completions"}, route)),
        await service.handle(ex, body_msg("request_body", request_body(max_tokens=100))),
    ]
    if replies[-1].HasField("immediate_response"):
        return replies
    replies.append(
        await service.handle(
            ex, headers_msg("response_headers", {":status": "200", "content-type": "application/json"})
        )
    )
    replies.append(await service.handle(ex, body_msg("response_body", response_body(prompt, completion))))
    await service.close(ex)
    return replies


async def test_each_message_gets_exactly_one_reply_of_the_matching_type(service: BudgetService) -> None:
    replies = await exchange(service, 10, 10)
    assert [r.WhichOneof("response") for r in replies] == [
        "request_headers", "request_body", "response_headers", "response_body",
    ]  # fmt: skip


async def test_spend_is_recorded_and_the_next_request_over_the_limit_gets_a_429(
    service: BudgetService,
) -> None:
    for usage in ((17, 39), (21, 683), (22, 689), (20, 649)):
        replies = await exchange(service, *usage)
        assert not replies[-1].HasField("immediate_response")

    blocked = (await exchange(service, 1, 1))[-1]

    assert blocked.HasField("immediate_response")
    imm = blocked.immediate_response
    assert imm.status.code == 429
    headers = {h.header.key: h.header.raw_value.decode() for h in imm.headers.set_headers}
    assert headers["x-ratelimit-limit"] == "2000"
    assert headers["x-ratelimit-remaining"] == "0"
    assert 86_400 <= int(headers["x-ratelimit-reset"]) <= 86_400 + 900
    assert headers["retry-after"] == headers["x-ratelimit-reset"]
    assert json.loads(imm.body)["error"]["code"] == "budget_exceeded"
    assert all(not h.header.value for h in imm.headers.set_headers), "values belong in raw_value"
    # The IETF fields name the entry; a day to wait is not worth an SDK's immediate retry.
    assert headers["ratelimit-policy"] == '"ns/demo/token-block";q=2000;w=86400'
    assert headers["ratelimit"] == f'"ns/demo/token-block";r=0;t={headers["retry-after"]}'
    assert headers["x-should-retry"] == "false"
    # And Envoy's access log can say which budget refused it.
    meta = blocked.dynamic_metadata.fields["extproc.budgets"].struct_value.fields
    assert (meta["budget_id"].string_value, meta["outcome"].string_value) == (
        "ns/demo/token-block",
        "blocked",
    )


@pytest.mark.parametrize(
    ("reset", "should_retry"), [(45, None), (60, None), (61, "false"), (86_400, "false")]
)
def test_a_budget_that_frees_up_within_a_minute_may_be_retried(reset: int, should_retry: str | None) -> None:
    charge = Charge(entry=demo_config().budgets[0].entries[1], values=())
    state = CounterState(spend=2000, held=0, over_limit=True, reset_seconds=reset)
    reply = replies.budget_exceeded(Blocked(charge, state))
    headers = {
        h.header.key: h.header.raw_value.decode() for h in reply.immediate_response.headers.set_headers
    }
    assert headers.get("x-should-retry") == should_retry
    assert headers["ratelimit"] == f'"ns/demo/token-block";r=0;t={reset}'


def _admission_metadata(reply: pb.ProcessingResponse) -> dict[str, str]:
    fields = reply.dynamic_metadata.fields["extproc.budgets"].struct_value.fields
    return {key: value.string_value for key, value in fields.items()}


async def test_an_admitted_request_carries_the_ratelimit_fields_of_its_tightest_entry(
    service: BudgetService,
) -> None:
    await exchange(service, 500, 500)  # 1,000 of the 2,000 tokens; $0.00625 of the $5
    ex = Exchange()
    await service.handle(ex, headers_msg("request_headers", {":path": "/v1/chat/completions"}, "budget-demo"))
    reply = await service.handle(ex, body_msg("request_body", request_body(max_tokens=100)))
    # The blocking token entry is the tightest (the USD one only audits): 2,000 - 1,000
    # spent - this request's own hold.
    assert ex.admission is not None
    held = ex.admission.holds[1].amount
    meta = _admission_metadata(reply)
    assert meta["ratelimit_policy"] == '"ns/demo/token-block";q=2000;w=86400'
    assert meta["ratelimit"].startswith(f'"ns/demo/token-block";r={1000 - held};t=')
    # The shared no-op reply was copied, not changed.
    assert not wire.CONTINUE_REQUEST_BODY.HasField("dynamic_metadata")
    await service.close(ex)


async def test_a_policy_can_leave_the_ratelimit_fields_off() -> None:
    config = demo_config()
    policy = dataclasses.replace(config.policies[0], rate_limit_headers=False)
    service = BudgetService(
        Snapshot(dataclasses.replace(config, policies=(policy,))), MemoryStore(), Metrics()
    )
    replies = await exchange(service, 10, 10)
    assert not replies[1].HasField("dynamic_metadata")


async def test_the_request_line_carries_the_subject_the_budget_ids_and_the_request_id() -> None:
    config, _ = hierarchy(org_limit=10_000)
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    with structlog.testing.capture_logs() as logs:
        await identity_exchange(service, 10, {**ACME_ML_ALICE, "x-request-id": "req-7"})
    (line,) = [x for x in logs if x["event"] == "request"]
    assert line["request_id"] == "req-7"
    assert line["subject"] == {"org": "acme", "team": "ml", "user": "alice"}
    assert sorted(line["budget_ids"]) == [
        "ns/org/org-monthly",
        "ns/teams/team-weekly",
        "ns/users/user-audit",
        "ns/users/user-daily",
    ]


async def test_cost_and_tokens_are_returned_as_dynamic_metadata(service: BudgetService) -> None:
    reply = (await exchange(service, 21, 683))[-1]
    meta = reply.dynamic_metadata.fields["extproc.budgets"].struct_value.fields
    assert meta["cost_usd"].string_value == "0.0068825"
    assert meta["input_tokens"].number_value == 21
    assert meta["output_tokens"].number_value == 683


async def test_untargeted_route_is_told_to_skip_bodies(service: BudgetService) -> None:
    ex = Exchange()
    reply = await service.handle(
        ex, headers_msg("request_headers", {":path": "/v1/chat/completions"}, "openai")
    )
    assert reply.HasField("request_headers")
    assert reply.mode_override.request_body_mode == 0  # NONE
    assert ex.context is None


async def test_a_stream_starting_at_the_response_phase_passes_through(service: BudgetService) -> None:
    ex = Exchange()
    r1 = await service.handle(ex, headers_msg("response_headers", {":status": "401"}))
    r2 = await service.handle(ex, body_msg("response_body", b"Jwt is missing"))
    assert r1.HasField("response_headers") and not r1.response_headers.HasField("response")
    assert r2.HasField("response_body") and not r2.response_body.response.HasField("body_mutation")


async def test_streamed_request_gets_include_usage_and_the_usage_chunk_is_hidden(
    service: BudgetService,
) -> None:
    ex = Exchange()
    await service.handle(ex, headers_msg("request_headers", {":path": "/v1/chat/completions"}, "budget-demo"))
    reply = await service.handle(ex, body_msg("request_body", request_body(stream=True)))
    new_body = reply.request_body.response.body_mutation.body
    assert json.loads(new_body)["stream_options"] == {"include_usage": True}
    cl = {h.header.key: h.header.raw_value for h in reply.request_body.response.header_mutation.set_headers}
    assert cl["content-length"] == str(len(new_body)).encode()

    sse = await service.handle(
        ex, headers_msg("response_headers", {":status": "200", "content-type": "text/event-stream"})
    )
    assert sse.mode_override.response_body_mode == 1  # STREAMED
    content = b'data: {"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    usage = (
        b'data: {"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":1500,"completion_tokens":600,'
        b'"total_tokens":2100}}\n\n'
    )
    stream = content + usage + b"data: [DONE]\n\n"
    seen = b""
    for i in range(0, len(stream), 13):
        part = stream[i : i + 13]
        r = await service.handle(ex, body_msg("response_body", part, eos=i + 13 >= len(stream)))
        common = r.response_body.response
        seen += common.body_mutation.body if common.HasField("body_mutation") else part
    assert seen == content + b"data: [DONE]\n\n"
    # 2,100 tokens were counted: the budget is spent.
    assert (await exchange(service, 1, 1))[-1].HasField("immediate_response")


class _Context:
    """What the stream loop reads of a grpc.aio context: the call's gRPC metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def _aiter(items: Iterable[pb.ProcessingRequest]) -> AsyncIterator[pb.ProcessingRequest]:
    for item in items:
        yield item


async def test_an_exception_in_our_code_is_answered_with_a_no_op_and_the_stream_goes_on(
    service: BudgetService,
) -> None:
    async def broken(ex: Exchange, msg: pb.ProcessingRequest) -> pb.ProcessingResponse:
        raise RuntimeError("boom")

    service.handle = broken  # type: ignore[method-assign]
    msgs = [
        headers_msg("request_headers", {":path": "/"}, "budget-demo"),
        body_msg("request_body", b"{}"),
        headers_msg("response_headers", {":status": "200"}),
    ]
    replies = [r async for r in ExternalProcessor(service).Process(_aiter(msgs), _Context())]  # type: ignore[arg-type]
    assert [r.WhichOneof("response") for r in replies] == [
        "request_headers",
        "request_body",
        "response_headers",
    ]
    assert service.metrics.errors.labels("request_body")._value.get() == 1


async def test_a_stream_that_ends_before_the_response_releases_its_hold(service: BudgetService) -> None:
    msgs = [
        headers_msg("request_headers", {":path": "/v1/chat/completions"}, "budget-demo"),
        body_msg("request_body", request_body(max_tokens=1900)),
    ]
    replies = [r async for r in ExternalProcessor(service).Process(_aiter(msgs), _Context())]  # type: ignore[arg-type]
    assert len(replies) == 2
    entry = service.snapshot.config.budgets[0].entries[1]
    state = (await service.store.read([counter_for(Charge(entry, ()))], time.time()))[0]
    assert state.held == 0
    assert state.spend == 0


class _DownStore(MemoryStore):
    async def admit(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")


async def test_redis_down_admits_on_an_open_policy_and_answers_503_on_a_closed_one() -> None:
    open_service = BudgetService(Snapshot(demo_config()), _DownStore(), Metrics())
    assert not (await exchange(open_service, 5, 5))[-1].HasField("immediate_response")

    closed = demo_config()
    policy = dataclasses.replace(closed.policies[0], failure_mode=FailureMode.CLOSED)
    closed_service = BudgetService(
        Snapshot(dataclasses.replace(closed, policies=(policy,))), _DownStore(), Metrics()
    )
    reply = (await exchange(closed_service, 5, 5))[-1]
    assert reply.immediate_response.status.code == 503
    assert json.loads(reply.immediate_response.body)["error"]["code"] == "budget_store_unavailable"


def per_user_config() -> Config:
    entries = (
        BudgetEntry("ns", "users", "per-user", Unit.TOKENS, Decimal(100), Window.DAY, Action.BLOCK,
                    frozen_map({"user": "*"})),
        BudgetEntry("ns", "users", "vip", Unit.TOKENS, Decimal(1000), Window.DAY, Action.BLOCK,
                    frozen_map({"user": "vip"})),
    )  # fmt: skip
    policy = EnforcementPolicy("ns", "p", (TargetRef("HTTPRoute", "budget-demo", "ns"),))
    dims = {"user": Dimension("user", DimensionSource.HEADER, "x-user")}
    return Config(
        budgets=(BudgetResource("ns", "users", entries),),
        policies=(policy,),
        dimensions=dims,
        catalogs=(CATALOG,),
    )


async def user_exchange(service: BudgetService, user: str, tokens: int) -> pb.ProcessingResponse:
    ex = Exchange()
    await service.handle(ex, headers_msg("request_headers", {":path": "/v1/chat/completions", "x-user": user},
                                         "budget-demo"))  # fmt: skip
    reply = await service.handle(ex, body_msg("request_body", request_body(max_tokens=1)))
    if reply.HasField("immediate_response"):
        return reply
    await service.handle(
        ex, headers_msg("response_headers", {":status": "200", "content-type": "application/json"})
    )
    await service.handle(ex, body_msg("response_body", response_body(tokens, 0)))
    return reply


async def test_a_star_entry_gives_each_header_value_its_own_allowance_and_exact_entries_override_it() -> None:
    service = BudgetService(Snapshot(per_user_config()), MemoryStore(), Metrics())
    assert not (await user_exchange(service, "alice", 100)).HasField("immediate_response")
    blocked = await user_exchange(service, "alice", 1)
    assert blocked.immediate_response.status.code == 429
    assert "ns/users/per-user" in json.loads(blocked.immediate_response.body)["error"]["message"]
    assert not (await user_exchange(service, "bob", 1)).HasField("immediate_response")
    # "vip" has an entry of its own (1,000), which overrides the "*" allowance (100).
    assert not (await user_exchange(service, "vip", 500)).HasField("immediate_response")
    assert not (await user_exchange(service, "vip", 1)).HasField("immediate_response")
    # No user header: no entry applies, nothing blocks.
    assert not (await user_exchange(service, "", 5000)).HasField("immediate_response")


async def test_response_trailers_close_the_exchange_and_are_answered_in_kind(service: BudgetService) -> None:
    ex = Exchange()
    await service.handle(ex, headers_msg("request_headers", {":path": "/v1/chat/completions"}, "budget-demo"))
    await service.handle(ex, body_msg("request_body", request_body(max_tokens=10)))
    await service.handle(
        ex, headers_msg("response_headers", {":status": "200", "content-type": "application/json"})
    )
    await service.handle(ex, body_msg("response_body", response_body(1500, 600), eos=False))
    trailers = await service.handle(ex, pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    assert trailers.HasField("response_trailers")
    assert ex.finished
    assert (await exchange(service, 1, 1))[-1].HasField("immediate_response")  # the 2,100 tokens counted


async def responding(service: BudgetService, content_type: str) -> Exchange:
    """A chat completion (max_tokens 10) admitted on budget-demo, its response begun."""
    ex = Exchange()
    await service.handle(ex, headers_msg("request_headers", {":path": "/v1/chat/completions"}, "budget-demo"))
    await service.handle(ex, body_msg("request_body", request_body(max_tokens=10)))
    await service.handle(
        ex, headers_msg("response_headers", {":status": "200", "content-type": content_type})
    )
    return ex


def estimating_config() -> Config:
    base = demo_config()
    policy = dataclasses.replace(base.policies[0], estimate_usage=True, provider="openai")
    return dataclasses.replace(base, policies=(policy,))


async def test_a_response_without_usage_is_estimated_from_sizes_only_when_the_policy_asks() -> None:
    for config, counted in ((demo_config(), False), (estimating_config(), True)):
        service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
        ex = await responding(service, "application/json")
        reply = await service.handle(ex, body_msg("response_body", b'{"id":"x","choices":[]}' + b" " * 7976))
        assert reply.HasField("dynamic_metadata") is counted
        if counted:
            meta = reply.dynamic_metadata.fields["extproc.budgets"].struct_value.fields
            assert meta["output_tokens"].number_value == 2000  # 8,000 bytes / 4
            assert service.metrics.estimated.labels("budget-demo")._value.get() == 1


async def test_an_unparsed_api_is_admitted_counted_and_its_hold_released(service: BudgetService) -> None:
    ex = Exchange()
    await service.handle(ex, headers_msg("request_headers", {":path": "/v1/audio/speech"}, "budget-demo"))
    reply = await service.handle(ex, body_msg("request_body", b'{"model":"tts-1","input":"hello"}'))
    assert not reply.HasField("immediate_response")
    assert ex.context is not None and ex.context.call is None
    assert service.metrics.unparsed.labels("budget-demo")._value.get() == 1
    await service.handle(
        ex, headers_msg("response_headers", {":status": "200", "content-type": "audio/mpeg"})
    )
    await service.handle(ex, body_msg("response_body", b"ID3..."))
    assert ex.admission is not None and not ex.admission.holding


async def test_the_request_log_line_carries_the_cost_components(service: BudgetService) -> None:
    with structlog.testing.capture_logs() as logs:
        await exchange(service, 21, 683)
    request = [x for x in logs if x["event"] == "request"][-1]
    assert request["cost_components"] == {"input": "0.0000525", "output": "0.00683"}
    assert request["gen_ai.usage.cost_usd"] == "0.0068825"
    assert request["usage_source"] == "reported"
    assert request["api"] == "openai.chat"


# --- hierarchies and identities --------------------------------------------------------

JWT = "envoy.filters.http.jwt_authn"


def tokens_entry(
    resource: str,
    name: str,
    subject: dict[str, str],
    limit: int,
    window: Window,
    action: Action = Action.BLOCK,
) -> BudgetEntry:
    return BudgetEntry("ns", resource, name, Unit.TOKENS, Decimal(limit), window, action, frozen_map(subject))


def identity_config(resources: dict[str, tuple[BudgetEntry, ...]], dims: dict[str, Dimension]) -> Config:
    policy = EnforcementPolicy("ns", "p", (TargetRef("HTTPRoute", "budget-demo", "ns"),))
    return Config(
        budgets=tuple(BudgetResource("ns", name, entries) for name, entries in resources.items()),
        policies=(policy,),
        dimensions=dims,
        catalogs=(CATALOG,),
    )


async def identity_exchange(
    service: BudgetService,
    tokens: int,
    headers: dict[str, str] | None = None,
    claims: dict[str, Any] | None = None,
    **body: Any,
) -> tuple[Exchange, pb.ProcessingResponse]:
    """One call with these headers, JWT claims and body fields, using `tokens` prompt tokens."""
    ex = Exchange()
    first = headers_msg(
        "request_headers", {":path": "/v1/chat/completions", **(headers or {})}, "budget-demo"
    )
    if claims is not None:
        first.metadata_context.filter_metadata[JWT].update({"jwt_payload": claims})
    await service.handle(ex, first)
    reply = await service.handle(ex, body_msg("request_body", request_body(max_tokens=1, **body)))
    if reply.HasField("immediate_response"):
        return ex, reply
    await service.handle(
        ex, headers_msg("response_headers", {":status": "200", "content-type": "application/json"})
    )
    await service.handle(ex, body_msg("response_body", response_body(tokens, 0)))
    return ex, reply


async def spend_of(service: BudgetService, entry: BudgetEntry, **values: str) -> int:
    charge = Charge(entry, tuple(sorted(values.items())))
    return (await service.store.read([counter_for(charge)], time.time()))[0].spend


def hierarchy(org_limit: int) -> tuple[Config, dict[str, BudgetEntry]]:
    entries = {
        "org": tokens_entry("org", "org-monthly", {"org": "acme"}, org_limit, Window.MONTH),
        "team": tokens_entry("teams", "team-weekly", {"team": "*"}, 500, Window.WEEK),
        "user": tokens_entry("users", "user-daily", {"user": "*"}, 100, Window.DAY),
        "audit": tokens_entry("users", "user-audit", {"user": "*"}, 50, Window.DAY, Action.AUDIT),
    }
    dims = {k: Dimension(k, DimensionSource.HEADER, f"x-{k}") for k in ("org", "team", "user")}
    resources = {
        "org": (entries["org"],),
        "teams": (entries["team"],),
        "users": (entries["user"], entries["audit"]),
    }
    return identity_config(resources, dims), entries


ACME_ML_ALICE = {"x-org": "acme", "x-team": "ml", "x-user": "alice"}


async def test_org_team_and_user_entries_with_different_windows_and_actions_are_all_charged() -> None:
    config, entries = hierarchy(org_limit=10_000)
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    ex, reply = await identity_exchange(service, 600, ACME_ML_ALICE)
    assert not reply.HasField("immediate_response")
    assert sorted(c.entry.name for c in ex.admission.charges) == [
        "org-monthly",
        "team-weekly",
        "user-audit",
        "user-daily",
    ]
    assert await spend_of(service, entries["org"], org="acme") == 600
    assert await spend_of(service, entries["team"], team="ml") == 600
    assert await spend_of(service, entries["user"], user="alice") == 600
    assert await spend_of(service, entries["audit"], user="alice") == 600


@pytest.mark.parametrize(
    ("org_limit", "named", "limit", "window_seconds"),
    [
        (10_000, "ns/teams/team-weekly", "500", 7 * 86_400),  # user (Day) and team (Week) block
        (600, "ns/org/org-monthly", "600", 30 * 86_400),  # user, team and org (Month) block
    ],
)
async def test_when_several_entries_block_the_429_names_the_one_that_blocks_longest(
    org_limit: int, named: str, limit: str, window_seconds: int
) -> None:
    config, _ = hierarchy(org_limit)
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    await identity_exchange(service, 600, ACME_ML_ALICE)
    with structlog.testing.capture_logs() as logs:
        _, blocked = await identity_exchange(service, 1, ACME_ML_ALICE)
    imm = blocked.immediate_response
    assert imm.status.code == 429
    assert named in json.loads(imm.body)["error"]["message"]
    headers = {h.header.key: h.header.raw_value.decode() for h in imm.headers.set_headers}
    assert headers["x-ratelimit-limit"] == limit
    assert window_seconds <= int(headers["x-ratelimit-reset"]) <= window_seconds + 86_400
    outcomes = {x["budget_id"]: x["outcome"] for x in logs if x["event"] == "budget exceeded"}
    assert outcomes["ns/users/user-audit"] == "over_limit_audit"  # over its limit, but only logged
    assert outcomes["ns/users/user-daily"] == "over_limit_block"
    # A different user in another team is still under every limit but the shared org's.
    _, other = await identity_exchange(service, 1, {"x-org": "acme", "x-team": "web", "x-user": "bob"})
    assert other.HasField("immediate_response") is (org_limit == 600)


def groups_config() -> tuple[Config, BudgetEntry, BudgetEntry]:
    eng = tokens_entry("teams", "eng-monthly", {"group": "engineering"}, 1000, Window.MONTH)
    rest = tokens_entry("teams", "everyone-else", {"group": "*"}, 100, Window.MONTH)
    dims = {"group": Dimension("group", DimensionSource.METADATA, JWT, ("jwt_payload", "groups"))}
    return identity_config({"teams": (eng, rest)}, dims), eng, rest


async def test_a_jwt_groups_claim_charges_each_group_to_its_own_entry_or_to_star() -> None:
    config, eng, rest = groups_config()
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    both = {"sub": "alice", "groups": ["engineering", "design"]}
    await identity_exchange(service, 150, claims=both)
    assert await spend_of(service, eng, group="engineering") == 150
    assert await spend_of(service, rest, group="design") == 150
    assert await spend_of(service, rest, group="engineering") == 0  # overridden for engineering
    # design's allowance is spent: a member of design is blocked, engineering alone is not.
    _, blocked = await identity_exchange(service, 1, claims=both)
    assert "ns/teams/everyone-else" in json.loads(blocked.immediate_response.body)["error"]["message"]
    _, admitted = await identity_exchange(service, 1, claims={"groups": ["engineering"]})
    assert not admitted.HasField("immediate_response")


async def test_a_body_field_and_an_api_key_hash_resolve_through_the_service() -> None:
    per_user = tokens_entry("users", "per-user", {"user": "*"}, 1000, Window.DAY)
    per_key = tokens_entry("keys", "per-key", {"key": "*"}, 1000, Window.DAY)
    dims = {
        "user": Dimension("user", DimensionSource.BODY, "", ("user",)),
        "key": Dimension("key", DimensionSource.API_KEY, "authorization"),
    }
    config = identity_config({"users": (per_user,), "keys": (per_key,)}, dims)
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    ex, _ = await identity_exchange(service, 10, {"authorization": "Bearer sk-secret-1"}, user="alice")
    key_id = "sha256:" + hashlib.sha256(b"sk-secret-1").hexdigest()[:16]
    assert await spend_of(service, per_user, user="alice") == 10
    assert await spend_of(service, per_key, key=key_id) == 10
    assert all("sk-secret-1" not in c.counter_id for c in ex.admission.charges)


async def test_an_entry_with_too_many_combinations_is_capped_and_logged() -> None:
    config, _, _ = groups_config()
    service = BudgetService(Snapshot(config), MemoryStore(), Metrics())
    groups = [f"g{i:03d}" for i in range(100)]
    with structlog.testing.capture_logs() as logs:
        ex, _ = await identity_exchange(service, 1, claims={"groups": groups})
    assert len(ex.admission.charges) == 64
    capped = [x for x in logs if x["event"] == "subject combinations capped"]
    assert capped and capped[0]["budget_ids"] == ["ns/teams/everyone-else"]


def gateway_config() -> Config:
    """1,000 tokens a day on every route of Gateway team-a/gw-a."""
    entries = (BudgetEntry("team-a", "b", "tokens", Unit.TOKENS, Decimal(1000), Window.DAY, Action.BLOCK),)
    policy = EnforcementPolicy("team-a", "p", (TargetRef("Gateway", "gw-a", "team-a"),))
    return Config(budgets=(BudgetResource("team-a", "b", entries),), policies=(policy,), catalogs=(CATALOG,))


def _unenforced(service: BudgetService, route: str) -> float | None:
    return service.metrics.registry.get_sample_value("extproc_unenforced_requests_total", {"route": route})


def _skips_bodies(reply: pb.ProcessingResponse) -> bool:
    return reply.mode_override.request_body_mode == reply.mode_override.NONE


async def test_the_gateway_named_in_the_streams_grpc_metadata_scopes_a_gateway_ref() -> None:
    service = BudgetService(Snapshot(gateway_config()), MemoryStore(), Metrics())
    msgs = [headers_msg("request_headers", {":path": "/v1/chat/completions"}, "team-a.api.0")]
    for gateway, enforced in (("team-a/gw-a", True), ("team-a/gw-b", False), ("team-b/gw-a", False)):
        context = _Context((("x-forwarded-for", "192.0.2.2"), ("x-extproc-gateway", gateway)))
        (reply,) = [r async for r in ExternalProcessor(service).Process(_aiter(msgs), context)]  # type: ignore[arg-type]
        assert _skips_bodies(reply) is not enforced, gateway  # untouched: skip the bodies
    # No gateway said: a Gateway ref selects nothing, and the request counts as unenforced.
    (reply,) = [r async for r in ExternalProcessor(service).Process(_aiter(msgs), _Context())]  # type: ignore[arg-type]
    assert _skips_bodies(reply)
    assert _unenforced(service, "team-a.api.0") == 3


def _envoy_gateway_virtual_host(namespace: str, name: str) -> str:
    """`xds.virtual_host_metadata` as Envoy 1.40 sends it: the Metadata's text format."""
    return (
        'filter_metadata { key: "envoy-gateway" value { fields { key: "resources" value { list_value {'
        ' values { struct_value { fields { key: "kind" value { string_value: "Gateway" } }'
        f' fields {{ key: "name" value {{ string_value: "{name}" }} }}'
        f' fields {{ key: "namespace" value {{ string_value: "{namespace}" }} }}'
        ' fields { key: "sectionName" value { string_value: "http" } } } } } } } } } '
    )


async def test_envoy_gateways_virtual_host_metadata_names_the_gateway() -> None:
    service = BudgetService(Snapshot(gateway_config()), MemoryStore(), Metrics())
    for (namespace, name), enforced in ((("team-a", "gw-a"), True), (("team-a", "gw-b"), False)):
        ex = Exchange()
        msg = headers_msg(
            "request_headers", {":path": "/v1/chat/completions"}, "httproute/team-a/x/rule/0/match/0/*"
        )
        msg.attributes["envoy.filters.http.ext_proc"].update(
            {"xds.virtual_host_metadata": _envoy_gateway_virtual_host(namespace, name)}
        )
        await service.handle(ex, msg)
        assert ex.gateway == f"{namespace}/{name}"
        assert (ex.context is not None) is enforced
    # The stream's gRPC metadata, when there, wins; metadata Envoy Gateway did not write is no gateway.
    ex = Exchange(gateway="team-a/gw-b")
    await service.handle(ex, msg)
    assert ex.gateway == "team-a/gw-b"
    ex = Exchange()
    junk = headers_msg("request_headers", {":path": "/"}, "r")
    junk.attributes["envoy.filters.http.ext_proc"].update({"xds.virtual_host_metadata": "filter_metadata {"})
    await service.handle(ex, junk)
    assert ex.gateway == "" and ex.context is None


async def test_unenforced_requests_are_counted_by_route_with_the_labels_capped(
    service: BudgetService,
) -> None:
    for i in range(UNENFORCED_ROUTE_LABELS + 5):
        await service.handle(Exchange(), headers_msg("request_headers", {":path": "/"}, f"route-{i}"))
    await service.handle(Exchange(), headers_msg("request_headers", {":path": "/"}, "route-0"))
    await service.handle(Exchange(), headers_msg("request_headers", {":path": "/"}, "budget-demo"))
    assert _unenforced(service, "route-0") == 2
    assert _unenforced(service, OTHER_ROUTES) == 5
    samples = service.metrics.registry.collect()
    routes = {
        s.labels["route"] for m in samples for s in m.samples if s.name == "extproc_unenforced_requests_total"
    }
    assert len(routes) == UNENFORCED_ROUTE_LABELS + 1 and "budget-demo" not in routes


async def test_a_stream_cut_by_the_drain_is_charged_an_estimate_capped_by_its_hold() -> None:
    """A drain's deadline ends a stream before its usage arrived: not free, and not more
    output than the request allowed (SSE framing makes bytes a poor count)."""
    for cut, counted in ((False, None), (True, 10)):
        service = BudgetService(Snapshot(demo_config()), MemoryStore(), Metrics())
        ex = await responding(service, "text/event-stream")
        await service.handle(ex, body_msg("response_body", b'data: {"choices":[]}\n\n' * 50, eos=False))
        meta = await service.close(ex, "cut by the drain" if cut else "stream ended", cut=cut)
        if counted is None:
            assert meta is None and service.metrics.estimated.labels("budget-demo")._value.get() == 0
        else:
            assert meta is not None
            fields = meta.fields["extproc.budgets"].struct_value.fields
            assert fields["output_tokens"].number_value == counted  # max_tokens, not 275
            assert fields["input_tokens"].number_value > 0


class _SlowStore:
    """A store with a round trip (as Redis has): records wait for `go`."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.go = asyncio.Event()
        self.recorded: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def record(self, claims: list[Claim], *args: Any) -> None:
        await self.go.wait()
        self.recorded.append([c.amount for c in claims])
        await self.inner.record(claims, *args)

    def record_soon(self, claims: list[Claim], hold_id: str, now: float) -> Any:
        return self.record(claims, hold_id, now)  # all of it a round trip


async def test_with_a_round_trip_the_record_goes_after_the_reply_and_settle_waits_for_it() -> None:
    store = _SlowStore()
    service = BudgetService(Snapshot(demo_config()), store, Metrics())  # type: ignore[arg-type]
    ex = await responding(service, "application/json")
    reply = await service.handle(ex, body_msg("response_body", response_body(1500, 600)))
    assert reply.HasField("dynamic_metadata")  # answered while the record waits
    assert store.recorded == []
    settling = asyncio.ensure_future(service.settle())
    await asyncio.sleep(0.01)
    assert not settling.done()
    store.go.set()
    await settling
    assert store.recorded == [[9_750_000, 2100]]  # the USD entry in nano-USD, the token entry
