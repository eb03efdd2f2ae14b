"""Route scoping, discovery and subject matching (pure)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from extproc.budgets import BudgetIndex, Charge, match, route_matches
from extproc.config.model import (
    Action,
    BudgetEntry,
    BudgetResource,
    Config,
    DiscoveryMode,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
    Unit,
    Window,
    frozen_map,
)


def entry(
    name: str, subject: dict[str, str] | None = None, resource: str = "teams", ns: str = "ai"
) -> BudgetEntry:
    return BudgetEntry(
        namespace=ns,
        resource=resource,
        name=name,
        unit=Unit.USD,
        amount=Decimal(100),
        window=Window.MONTH,
        action=Action.BLOCK,
        subject=frozen_map(subject),
    )


TEAMS = BudgetResource(
    namespace="ai",
    name="teams",
    entries=(
        entry("eng-monthly", {"group": "engineering"}),
        entry("product-monthly", {"group": "product"}),
        entry("everyone-else", {"group": "*"}),
    ),
)


def names(charges: list[Charge]) -> list[str]:
    return [c.entry.name for c in charges]


def test_exact_entry_overrides_wildcard_on_the_same_key() -> None:
    assert names(match([TEAMS], {"group": "engineering"})) == ["eng-monthly"]
    assert names(match([TEAMS], {"group": "product"})) == ["product-monthly"]


def test_wildcard_watches_groups_without_an_entry_of_their_own() -> None:
    charges = match([TEAMS], {"group": "design"})
    assert names(charges) == ["everyone-else"]
    assert charges[0].values == (("group", "design"),)


def test_missing_or_empty_dimension_matches_no_subject_entry() -> None:
    assert match([TEAMS], {}) == []
    assert match([TEAMS], {"group": ""}) == []


def test_wildcard_gives_each_value_its_own_allowance() -> None:
    res = BudgetResource("ai", "users", (entry("per-user", {"user": "*"}, "users"),))
    a = match([res], {"user": "alice"})[0].counter_id
    b = match([res], {"user": "bob"})[0].counter_id
    assert a != b
    assert a == "ai/users/per-user:USD:Month|user=alice"


def test_entries_on_different_keys_stack() -> None:
    res = BudgetResource(
        "ai",
        "mixed",
        (
            entry("team", {"group": "engineering"}, "mixed"),
            entry("user", {"user": "*"}, "mixed"),
            entry("all", None, "mixed"),
        ),
    )
    assert sorted(names(match([res], {"group": "engineering", "user": "alice"}))) == ["all", "team", "user"]


def test_no_subject_means_one_shared_allowance() -> None:
    res = BudgetResource("ai", "demo", (entry("demo", None, "demo"),))
    assert match([res], {"user": "a"})[0].counter_id == match([res], {})[0].counter_id


def test_override_is_within_one_resource_only() -> None:
    other = BudgetResource("ai", "org", (entry("org-wide", {"group": "*"}, "org"),))
    assert sorted(names(match([TEAMS, other], {"group": "engineering"}))) == ["eng-monthly", "org-wide"]


@given(value=st.text(min_size=1, max_size=8))
def test_an_exact_entry_always_overrides_star_on_its_key(value: str) -> None:
    res = BudgetResource("ai", "r", (entry("exact", {"k": value}, "r"), entry("star", {"k": "*"}, "r")))
    assert names(match([res], {"k": value})) == ["exact"]


@given(dims=st.dictionaries(st.sampled_from(["group", "user", "model"]), st.text(max_size=5)))
def test_no_request_is_charged_twice_to_one_entry(dims: dict[str, str]) -> None:
    ids = [c.entry.budget_id for c in match([TEAMS], dims)]
    assert len(ids) == len(set(ids))


def test_route_names_match_name_namespace_name_and_envoy_gateway_form() -> None:
    ref = TargetRef(kind="HTTPRoute", name="budget-demo", namespace="agentgateway-system")
    assert route_matches(ref, "budget-demo")
    assert route_matches(ref, "agentgateway-system/budget-demo")
    assert route_matches(ref, "httproute/agentgateway-system/budget-demo/rule/0/match/0/example_com")
    assert not route_matches(ref, "openai")
    assert not route_matches(ref, "httproute/other/budget-demo/rule/0/match/0/x")
    assert not route_matches(ref, "budget-demo-2")


def test_gateway_target_enforces_every_route() -> None:
    assert route_matches(TargetRef(kind="Gateway", name="gw", namespace="ai"), "anything")


def _config(discovery: DiscoveryMode, selector: dict[str, str] | None = None) -> Config:
    policy = EnforcementPolicy(
        namespace="platform",
        name="p",
        target_refs=(TargetRef("HTTPRoute", "llm", "platform"),),
        discovery=discovery,
        selector=frozen_map(selector),
    )
    budgets = (
        BudgetResource("platform", "own", (entry("a", None, "own", "platform"),)),
        BudgetResource("team-a", "mine", (entry("b", None, "mine", "team-a"),)),
        BudgetResource("team-b", "mine", (entry("c", None, "mine", "team-b"),)),
    )
    labels = {"team-a": frozen_map({"budgets": "on"}), "team-b": frozen_map({"budgets": "off"})}
    return Config(budgets=budgets, policies=(policy,), namespace_labels=labels)


def _resources(config: Config) -> list[str]:
    route = BudgetIndex(config).for_route("llm")
    assert route is not None
    return sorted(f"{r.namespace}/{r.name}" for r in route.resources)


def test_discovery_same_all_and_selector() -> None:
    assert _resources(_config(DiscoveryMode.SAME)) == ["platform/own"]
    assert _resources(_config(DiscoveryMode.ALL)) == ["platform/own", "team-a/mine", "team-b/mine"]
    assert _resources(_config(DiscoveryMode.SELECTOR, {"budgets": "on"})) == ["team-a/mine"]


def test_untargeted_route_has_no_budgets_and_a_budget_reached_twice_counts_once() -> None:
    config = _config(DiscoveryMode.ALL)
    twice = Config(
        budgets=config.budgets,
        policies=(*config.policies, EnforcementPolicy("platform", "q", config.policies[0].target_refs)),
    )
    index = BudgetIndex(twice)
    assert index.for_route("other") is None
    route = index.for_route("llm")
    assert route is not None
    assert len(route.resources) == 3
    assert route.failure_mode is FailureMode.OPEN
