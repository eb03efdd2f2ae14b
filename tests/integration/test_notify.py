"""Threshold notifications against real local HTTP receivers and a real Redis: signed,
Slack-shaped, once per crossing per window across replicas, retried, never followed into a
redirect, and never holding anything up while a receiver hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from extproc.notify import Crossing, Notifier, Webhook
from extproc.store import RedisStore
from tests.support.webhooks import Receiver

KEY = b"hook-secret"
READING = Crossing(
    budget_id="team-a/teams/per-user",
    subject="user=ann",
    threshold=0,
    utilization=0.85,
    spend="850",
    limit="1000",
    unit="Tokens",
    window="Day",
    action="Block",
    at=1_764_000_000.0,
)


@pytest.fixture()
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    shared = RedisStore(redis_url, timeout_seconds=2)
    yield shared
    await shared.close()


@pytest.fixture()
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    hook = Receiver(getattr(request, "param", "ok"))
    yield hook
    hook.stop()


def notifier(store: RedisStore, *hooks: Webhook, registry: CollectorRegistry | None = None) -> Notifier:
    return Notifier(
        store, hooks, registry=registry or CollectorRegistry(), backoff_seconds=0.05, timeout_seconds=0.5
    )


def outcomes(registry: CollectorRegistry, kind: str = "json") -> dict[str, float]:
    return {
        outcome: registry.get_sample_value("extproc_notifications_total", {"kind": kind, "outcome": outcome})
        or 0
        for outcome in ("sent", "retried", "failed")
    }


async def test_a_crossing_goes_once_across_replicas_signed_and_for_each_threshold_passed(
    store: RedisStore, receiver: Receiver
) -> None:
    hook = Webhook(receiver.url, "json", KEY)
    replicas = [notifier(store, hook), notifier(store, hook)]
    try:
        for replica in replicas:  # both read the same shared figure
            await replica.observe(READING, 3600)
            await replica.observe(READING, 3600)  # and again at their next refresh
        for replica in replicas:
            await replica.drained()
        got = receiver.wait_for(2)
        await asyncio.sleep(0.2)
        assert sorted(r.json()["threshold"] for r in receiver.requests) == [50, 80]  # not 100: at 85%
        first = got[0]
        body = first.json()
        assert (body["event"], body["budget_id"], body["subject"], body["spend"], body["limit"]) == (
            "budget.threshold",
            "team-a/teams/per-user",
            "user=ann",
            "850",
            "1000",
        )
        stamp = first.headers["x-extproc-timestamp"]
        expected = hmac.new(KEY, stamp.encode() + b"." + first.body, hashlib.sha256).hexdigest()
        assert first.headers["x-extproc-signature"] == f"sha256={expected}"
        assert abs(int(stamp) - time.time()) < 60
    finally:
        for replica in replicas:
            await replica.close()


async def test_the_next_window_fires_again(store: RedisStore, receiver: Receiver) -> None:
    one = notifier(store, Webhook(receiver.url))
    try:
        reading = dataclasses.replace(READING, budget_id="team-a/teams/window", utilization=1.0)
        await one.observe(reading, 1)  # a one-second window
        await one.drained()
        assert len(receiver.wait_for(3)) == 3  # 50, 80, 100
        await one.observe(reading, 1)
        await one.drained()
        assert len(receiver.requests) == 3  # the same window: nothing more
        await asyncio.sleep(1.2)
        await one.observe(reading, 1)
        await one.drained()
        assert len(receiver.wait_for(6)) == 6
    finally:
        await one.close()


async def test_slack_gets_a_sentence(store: RedisStore, receiver: Receiver) -> None:
    one = notifier(store, Webhook(receiver.url, "slack"))
    try:
        await one.observe(dataclasses.replace(READING, budget_id="team-a/teams/slack"), 3600)
        await one.drained()
        texts = [r.json()["text"] for r in receiver.wait_for(2)]
        assert texts[0] == (
            "Budget team-a/teams/slack for user=ann passed 50% of its limit: 850 of 1000 Tokens this day"
            " (85%; action Block)."
        )
        assert "x-extproc-signature" not in receiver.requests[0].headers
    finally:
        await one.close()


async def deliver_at_60_percent(
    store: RedisStore, receiver: Receiver, budget_id: str, *, before_drained: dict[str, float] | None = None
) -> CollectorRegistry:
    """One crossing of 50% sent to `receiver`; its delivery counts once all is done. With
    `before_drained`, what the counts must be when `observe` has returned."""
    registry = CollectorRegistry()
    one = notifier(store, Webhook(receiver.url), registry=registry)
    try:
        await one.observe(dataclasses.replace(READING, budget_id=budget_id, utilization=0.6), 3600)
        if before_drained is not None:
            assert outcomes(registry) == before_drained
        await one.drained()
        return registry
    finally:
        await one.close()


@pytest.mark.parametrize("receiver", ["fail_first"], indirect=True)
async def test_a_receiver_that_fails_first_gets_it_on_a_retry(store: RedisStore, receiver: Receiver) -> None:
    registry = await deliver_at_60_percent(store, receiver, "team-a/teams/flaky")
    assert [r.json()["threshold"] for r in receiver.requests] == [50, 50]  # a 500, then a 204
    assert outcomes(registry) == {"sent": 1, "retried": 1, "failed": 0}


@pytest.mark.parametrize("receiver", ["hang"], indirect=True)
async def test_a_receiver_that_never_answers_holds_nothing_up(store: RedisStore, receiver: Receiver) -> None:
    # observe() only claims and queues: when it returns, the delivery is still to come.
    nothing_yet = {"sent": 0, "retried": 0, "failed": 0}
    registry = await deliver_at_60_percent(store, receiver, "team-a/teams/hang", before_drained=nothing_yet)
    assert len(receiver.requests) == 4  # four attempts, each cut by the timeout
    assert outcomes(registry) == {"sent": 0, "retried": 3, "failed": 1}


@pytest.mark.parametrize("receiver", ["redirect"], indirect=True)
async def test_a_redirect_is_not_followed(store: RedisStore, receiver: Receiver) -> None:
    registry = await deliver_at_60_percent(store, receiver, "team-a/teams/moved")
    assert [r.path for r in receiver.requests] == ["/hook"]  # /moved never asked
    assert outcomes(registry) == {"sent": 0, "retried": 0, "failed": 1}
