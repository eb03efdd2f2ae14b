"""The Kubernetes source's judgement and the status it derives, without a server: objects are
put into the reflectors' copies by hand and `rebuild` is called (the watch itself is proven
against a wire-protocol server in tests/integration/test_kubernetes_source.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from extproc.config.model import Config
from extproc.config.sources.kubernetes.source import KubernetesMetrics, KubernetesSource, ObjectState
from extproc.config.sources.kubernetes.status import CONTROLLER_NAME, desired_status

OURS = "budgets.extproc.dev/v1alpha1"
_uid = iter(range(1, 1_000_000))


def obj(kind: str, name: str, namespace: str | None = "team-a", spec: Any = None, **meta: Any) -> dict:
    metadata = {"name": name, "uid": f"uid-{name}-{namespace}", "resourceVersion": str(next(_uid)), **meta}
    if namespace is not None:
        metadata["namespace"] = namespace
    version = "v1" if kind in ("Namespace", "ConfigMap") else OURS
    return {"apiVersion": version, "kind": kind, "metadata": metadata, "spec": spec}


def budget(name: str, amount: Any = 10, namespace: str = "team-a", **meta: Any) -> dict:
    entry = {"name": "e", "limit": {"unit": "USD", "amount": amount}, "window": {"unit": "Day"}}
    entry["onBudgetExceeded"] = "Block"
    return obj("Budget", name, namespace, {"budgets": [entry]}, **meta)


def policy(name: str, namespace: str = "team-a", route: str = "chat", created: str = "", **spec: Any) -> dict:
    refs = [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route}]
    meta = {"creationTimestamp": created} if created else {}
    return obj("BudgetPolicy", name, namespace, {"targetRefs": refs, **spec}, **meta)


@pytest.fixture
async def source() -> AsyncIterator[KubernetesSource]:
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:1"))
    applied: list[Config] = []
    src = KubernetesSource(api, applied.append, KubernetesMetrics(CollectorRegistry()))
    for reflector in [*src._reflectors, *src._targets.values()]:
        reflector.synced.set()
    yield src
    await api.close()


def put(src: KubernetesSource, *objects: dict) -> None:
    for reflector in src._reflectors:
        reflector.objects = {
            (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
            for o in objects
            if o["kind"] == reflector.collection.kind
        }
    src.rebuild()


def state(src: KubernetesSource, name: str) -> ObjectState:
    (found,) = [s for s in src.states if s.meta.get("name") == name]
    return found


def budget_ids(src: KubernetesSource) -> list[str]:
    assert src.config is not None
    return sorted(e.budget_id for b in src.config.budgets for e in b.entries)


@pytest.mark.parametrize(
    "spec",
    [["not", "a", "mapping"], {"budgets": "many"}, {"budgets": [{"name": 7}]}, None, {"budgets": [None]}],
)
async def test_objects_of_the_wrong_shape_are_left_out_and_the_rest_serve(
    source: KubernetesSource, spec: Any
) -> None:
    put(source, budget("good"), obj("Budget", "odd", spec=spec))
    assert budget_ids(source) == ["team-a/good/e"]
    odd = state(source, "odd")
    assert odd.serving is None and odd.problems
    assert all(str(p).startswith("Budget team-a/odd: ") for p in odd.problems)


async def test_an_object_without_a_name_or_of_an_unexpected_kind_is_judged_not_crashed(
    source: KubernetesSource,
) -> None:
    nameless = budget("x")
    nameless["metadata"].pop("name")
    nameless["metadata"]["name"] = ""
    put(source, nameless, budget("good"))
    assert budget_ids(source) == ["team-a/good/e"]


async def test_a_huge_object_is_read_whole(source: KubernetesSource) -> None:
    entries = [
        {
            "name": f"e{i}",
            "limit": {"unit": "Tokens", "amount": 1000 + i},
            "window": {"unit": "Day"},
            "onBudgetExceeded": "Audit",
        }
        for i in range(5000)
    ]
    put(source, obj("Budget", "big", spec={"budgets": entries}))
    assert len(budget_ids(source)) == 5000


async def test_an_invalid_update_serves_the_last_good_version_until_fixed(source: KubernetesSource) -> None:
    put(source, budget("a", amount=10))
    put(source, budget("a", amount="ten"))
    assert source.config is not None
    (entry,) = source.config.budgets[0].entries
    assert int(entry.amount) == 10
    assert state(source, "a").stale
    put(source, budget("a", amount=20))
    (entry,) = source.config.budgets[0].entries
    assert int(entry.amount) == 20 and not state(source, "a").problems


async def test_in_a_conflict_the_older_object_wins_and_the_newer_is_reported(
    source: KubernetesSource,
) -> None:
    header = {"dimensions": {"group": {"header": "x-team"}}}
    other = {"dimensions": {"group": {"header": "x-group"}}}
    older = obj("BudgetDimensions", "first", spec=header, creationTimestamp="2026-01-01T00:00:00Z")
    newer = obj("BudgetDimensions", "second", "team-b", spec=other, creationTimestamp="2026-06-01T00:00:00Z")
    put(source, newer, older)
    assert source.config is not None
    assert source.config.dimensions["group"].name == "x-team"
    (problem,) = state(source, "second").problems
    assert problem.reason == 'dimension "group" is already defined at BudgetDimensions team-a/first'


async def test_a_deleted_object_goes_and_its_last_good_version_with_it(source: KubernetesSource) -> None:
    put(source, budget("a"), budget("b"))
    put(source, budget("a", amount=-1), budget("b"))
    put(source, budget("b"))
    assert budget_ids(source) == ["team-a/b/e"]
    assert source._good.keys() == {"uid-b-team-a"}


async def test_nothing_is_applied_before_every_collection_was_listed(source: KubernetesSource) -> None:
    source._reflectors[0].synced.clear()
    put(source, budget("a"))
    assert source.config is None and not source.ready.is_set()


# --- status -------------------------------------------------------------------------


async def test_budget_status_says_accepted_and_enforced_or_not_discovered(source: KubernetesSource) -> None:
    put(source, budget("here"), budget("away", namespace="team-b"), policy("p"))
    assert source.config is not None
    here = desired_status(state(source, "here"), source.config, {}, now="T1")
    assert here == {
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "1 entry accepted",
             "observedGeneration": 0, "lastTransitionTime": "T1"},
            {"type": "Enforced", "status": "True", "reason": "Enforced",
             "message": "discovered by policy team-a/p", "observedGeneration": 0, "lastTransitionTime": "T1"},
        ]
    }  # fmt: skip
    away = desired_status(state(source, "away"), source.config, {}, now="T1")
    assert away is not None
    assert [(c["type"], c["status"], c["reason"]) for c in away["conditions"]] == [
        ("Accepted", "True", "Accepted"),
        ("Enforced", "False", "NotDiscovered"),
    ]


async def test_a_condition_keeps_its_transition_time_while_its_status_holds(source: KubernetesSource) -> None:
    first = budget("a", generation=1)
    put(source, first, policy("p"))
    assert source.config is not None
    shown = desired_status(state(source, "a"), source.config, {}, now="T1")
    assert shown is not None
    first["status"] = shown
    put(source, first, policy("p"))
    again = desired_status(state(source, "a"), source.config, {}, now="T2")
    assert again == shown
    broken = budget("a", amount=0, generation=2)
    broken["status"] = shown
    put(source, broken, policy("p"))
    changed = desired_status(state(source, "a"), source.config, {}, now="T3")
    assert changed is not None
    accepted, enforced = changed["conditions"]
    assert (accepted["status"], accepted["lastTransitionTime"], accepted["observedGeneration"]) == (
        "False",
        "T3",
        2,
    )
    assert "the last accepted version is still enforced" in accepted["message"]
    assert (enforced["status"], enforced["lastTransitionTime"]) == ("True", "T1")


async def test_policy_ancestors_report_missing_targets_and_conflicts(source: KubernetesSource) -> None:
    older = policy("older", provider="openai", created="2026-01-01T00:00:00Z")
    newer = policy("newer", provider="azure", created="2026-02-01T00:00:00Z")
    missing = policy("missing", route="nope")
    put(source, budget("a"), older, newer, missing)
    assert source.config is not None
    routes = {"HTTPRoute": {("team-a", "chat")}, "Gateway": set()}

    def verdicts(name: str) -> list[tuple[str, str, str]]:
        status = desired_status(state(source, name), source.config, routes, now="T")
        assert status is not None
        return [
            (a["ancestorRef"]["name"], c["type"], c["reason"])
            for a in status["ancestors"]
            for c in a["conditions"]
        ]

    assert verdicts("older") == [("chat", "Accepted", "Accepted"), ("chat", "Attached", "Attached")]
    assert verdicts("newer") == [("chat", "Accepted", "Conflicted"), ("chat", "Attached", "Attached")]
    assert verdicts("missing") == [
        ("nope", "Accepted", "TargetNotFound"),
        ("nope", "Attached", "TargetNotFound"),
    ]
    # With no Gateway API in the cluster (None), a target cannot be said to be missing.
    unknown = desired_status(state(source, "missing"), source.config, {"HTTPRoute": None}, now="T")
    assert unknown is not None and unknown["ancestors"][0]["conditions"][0]["reason"] == "Accepted"


async def test_other_controllers_ancestors_are_kept_and_the_list_is_capped(source: KubernetesSource) -> None:
    theirs = [
        {"ancestorRef": {"name": f"g{i}"}, "controllerName": "solo.io/other", "conditions": []}
        for i in range(20)
    ]
    mine = policy("p")
    mine["status"] = {"ancestors": theirs}
    put(source, budget("a"), mine)
    assert source.config is not None
    status = desired_status(state(source, "p"), source.config, {}, now="T")
    assert status is not None
    ancestors = status["ancestors"]
    assert len(ancestors) == 16
    assert ancestors[0]["controllerName"] == CONTROLLER_NAME
    assert [a["ancestorRef"]["name"] for a in ancestors[1:]] == [f"g{i}" for i in range(15)]


async def test_a_never_accepted_policy_reports_invalid_on_the_targets_it_names(
    source: KubernetesSource,
) -> None:
    bad = policy("bad", failureMode="Sometimes")
    put(source, budget("a"), bad)
    assert source.config is not None
    status = desired_status(state(source, "bad"), source.config, {}, now="T")
    assert status is not None
    (ancestor,) = status["ancestors"]
    assert ancestor["ancestorRef"]["name"] == "chat"
    accepted = ancestor["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert 'spec.failureMode: unknown failure mode "Sometimes"' in accepted["message"]
