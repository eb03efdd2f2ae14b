"""Route scoping, discovery and subject matching (pure)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from extproc.budgets import (
    MAX_COMBINATIONS,
    BudgetIndex,
    Charge,
    match,
    match_request,
    parse_subject,
    route_matches,
)
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


def charged(charges: list[Charge]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Each charge as (entry name, subject values)."""
    return [(c.entry.name, c.values) for c in charges]


def test_exact_entry_overrides_wildcard_on_the_same_key() -> None:
    assert names(match([TEAMS], {"group": "engineering"})) == ["eng-monthly"]
    assert names(match([TEAMS], {"group": "product"})) == ["product-monthly"]


def test_wildcard_watches_groups_without_an_entry_of_their_own() -> None:
    charges = match([TEAMS], {"group": "design"})
    assert charged(charges) == [("everyone-else", (("group", "design"),))]


def test_missing_or_empty_dimension_matches_no_subject_entry() -> None:
    assert match([TEAMS], {}) == []
    assert match([TEAMS], {"group": ""}) == []
    assert match([TEAMS], {"group": ("", "")}) == []


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


@given(value=st.text(min_size=1, max_size=8).filter(lambda v: v != "*"))
def test_an_exact_entry_always_overrides_star_on_its_key(value: str) -> None:
    res = BudgetResource("ai", "r", (entry("exact", {"k": value}, "r"), entry("star", {"k": "*"}, "r")))
    assert names(match([res], {"k": value})) == ["exact"]


@given(dims=st.dictionaries(st.sampled_from(["group", "user", "model"]), st.text(max_size=5)))
def test_no_request_is_charged_twice_to_one_entry(dims: dict[str, str]) -> None:
    ids = [c.entry.budget_id for c in match([TEAMS], dims)]
    assert len(ids) == len(set(ids))


# --- list-valued dimensions ---------------------------------------------------------


def test_an_exact_entry_applies_when_its_value_is_among_the_requests_values() -> None:
    assert names(match([TEAMS], {"group": ("engineering", "product")})) == ["eng-monthly", "product-monthly"]


def test_the_override_applies_value_by_value() -> None:
    # engineering has its own entry; design is watched by everyone-else.
    assert charged(match([TEAMS], {"group": ("engineering", "design")})) == [
        ("eng-monthly", (("group", "engineering"),)),
        ("everyone-else", (("group", "design"),)),
    ]


def test_a_star_entry_is_charged_once_per_value_to_each_values_own_allowance() -> None:
    res = BudgetResource("ai", "groups", (entry("per-group", {"group": "*"}, "groups"),))
    charges = match([res], {"group": ("ml", "eng", "ml", "")})
    assert [c.counter_id for c in charges] == [
        "ai/groups/per-group:USD:Month|group=eng",
        "ai/groups/per-group:USD:Month|group=ml",
    ]
    # The same allowance a request with the single value is charged to.
    assert match([res], {"group": "ml"})[0].counter_id == charges[1].counter_id


def test_one_value_and_a_list_of_that_value_match_alike() -> None:
    assert match([TEAMS], {"group": "design"}) == match([TEAMS], {"group": ("design",)})


def test_several_list_valued_keys_are_charged_per_combination() -> None:
    res = BudgetResource(
        "ai",
        "pairs",
        (
            entry("pair", {"group": "*", "region": "*"}, "pairs"),
            entry("eu-eng", {"group": "eng", "region": "eu"}, "pairs"),
        ),
    )
    matching = match_request([res], {"group": ("ml", "eng"), "region": ("us", "eu")})
    assert charged(list(matching.charges)) == [
        ("pair", (("group", "eng"), ("region", "us"))),
        ("pair", (("group", "ml"), ("region", "eu"))),
        ("pair", (("group", "ml"), ("region", "us"))),
        ("eu-eng", (("group", "eng"), ("region", "eu"))),
    ]
    assert matching.capped == ()


def test_combinations_beyond_the_cap_are_left_uncharged_and_reported() -> None:
    res = BudgetResource("ai", "pairs", (entry("pair", {"a": "*", "b": "*"}, "pairs"),))
    wide = tuple(f"v{i:02d}" for i in range(10))
    matching = match_request([res], {"a": wide, "b": wide})  # 100 combinations
    assert len(matching.charges) == MAX_COMBINATIONS
    assert matching.capped == ("ai/pairs/pair",)
    # The first ones in sorted order.
    assert [c.values for c in matching.charges[:2]] == [
        (("a", "v00"), ("b", "v00")),
        (("a", "v00"), ("b", "v01")),
    ]
    assert matching.charges[-1].values == (("a", "v06"), ("b", "v03"))
    exactly = match_request([res], {"a": wide[:8], "b": wide[:8]})  # 64: all charged, nothing capped
    assert len(exactly.charges) == MAX_COMBINATIONS and exactly.capped == ()


def test_overridden_combinations_do_not_count_against_the_cap() -> None:
    groups = tuple(f"g{i:02d}" for i in range(MAX_COMBINATIONS + 1))
    res = BudgetResource(
        "ai",
        "groups",
        (entry("per-group", {"group": "*"}, "groups"), entry("g00", {"group": "g00"}, "groups")),
    )
    matching = match_request([res], {"group": groups})
    assert matching.capped == ()
    assert names(list(matching.charges)).count("per-group") == MAX_COMBINATIONS
    assert names(list(matching.charges)).count("g00") == 1


def test_org_team_and_user_entries_in_separate_resources_all_apply() -> None:
    org = BudgetResource("ai", "org", (entry("org", {"org": "acme"}, "org"),))
    teams = BudgetResource(
        "ai", "teams", (entry("ml", {"group": "ml"}, "teams"), entry("other", {"group": "*"}, "teams"))
    )
    users = BudgetResource("ai", "users", (entry("per-user", {"user": "*"}, "users"),))
    dims = {"org": "acme", "group": ("ml", "web"), "user": "alice"}
    assert charged(match([org, teams, users], dims)) == [
        ("org", (("org", "acme"),)),
        ("ml", (("group", "ml"),)),
        ("other", (("group", "web"),)),
        ("per-user", (("user", "alice"),)),
    ]


# --- properties over random entries and requests ------------------------------------

_KEYS = ("group", "user")
_VALUES = ("a", "b", "c", "")
_subjects = st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(("a", "b", "c", "*")), max_size=2)
_resources = st.lists(st.lists(_subjects, max_size=5), min_size=1, max_size=3).map(
    lambda resources: [
        BudgetResource(
            "ai", f"r{i}", tuple(entry(f"e{j}", subject, f"r{i}") for j, subject in enumerate(subjects))
        )
        for i, subjects in enumerate(resources)
    ]
)
_dim_value = st.one_of(st.sampled_from(_VALUES), st.lists(st.sampled_from(_VALUES), max_size=4).map(tuple))
_dims = st.dictionaries(st.sampled_from(_KEYS), _dim_value)


def _value_set(value: str | tuple[str, ...]) -> set[str]:
    return {v for v in ((value,) if isinstance(value, str) else value) if v}


@given(
    values=st.lists(st.sampled_from(("a", "b", "c", "d")), min_size=1), exact=st.sets(st.sampled_from("abcd"))
)
def test_an_exact_entry_always_overrides_star_on_its_key_value_by_value(
    values: list[str], exact: set[str]
) -> None:
    res = BudgetResource(
        "ai",
        "r",
        (entry("star", {"k": "*"}, "r"), *(entry(f"exact-{v}", {"k": v}, "r") for v in sorted(exact))),
    )
    charges = match([res], {"k": tuple(values)})
    for value in set(values):
        under = [c.entry.name for c in charges if c.values == (("k", value),)]
        # Every value is charged once in this resource: to its own entry if it has one, else to "*".
        assert under == [f"exact-{value}" if value in exact else "star"]
    assert len(charges) == len(set(values))


@given(resources=_resources, dims=_dims)
def test_no_request_is_charged_twice_to_one_entry_and_values(
    resources: list[BudgetResource], dims: dict[str, str | tuple[str, ...]]
) -> None:
    charges = match(resources, dims)
    pairs = [(c.entry.budget_id, c.values) for c in charges]
    assert len(pairs) == len(set(pairs))
    ids = [c.counter_id for c in charges]
    assert len(ids) == len(set(ids))


@given(resources=_resources, dims=_dims, data=st.data())
def test_charges_are_a_function_of_the_dimensions_not_their_order(
    resources: list[BudgetResource], dims: dict[str, str | tuple[str, ...]], data: st.DataObject
) -> None:
    shuffled = {
        key: value if isinstance(value, str) else tuple(data.draw(st.permutations(value)))
        for key, value in reversed(list(dims.items()))
    }
    assert match_request(resources, shuffled) == match_request(resources, dims)


@given(resources=_resources, dims=_dims, data=st.data())
def test_a_list_never_counts_less_than_any_one_of_its_values(
    resources: list[BudgetResource], dims: dict[str, str | tuple[str, ...]], data: st.DataObject
) -> None:
    present = {key: sorted(_value_set(value)) for key, value in dims.items() if _value_set(value)}
    one_each = {key: data.draw(st.sampled_from(values)) for key, values in present.items()}
    as_lists = {c.counter_id for c in match(resources, dims)}
    assert {c.counter_id for c in match(resources, one_each)} <= as_lists


CHAT = TargetRef(kind="HTTPRoute", name="chat", namespace="team-a")


def test_route_names_match_name_namespace_name_and_envoy_gateway_form() -> None:
    ref = TargetRef(kind="HTTPRoute", name="budget-demo", namespace="agentgateway-system")
    assert route_matches(ref, "budget-demo")
    assert route_matches(ref, "agentgateway-system/budget-demo")
    assert route_matches(ref, "httproute/agentgateway-system/budget-demo/rule/0/match/0/example_com")
    assert not route_matches(ref, "openai")
    assert not route_matches(ref, "httproute/other/budget-demo/rule/0/match/0/x")
    assert not route_matches(ref, "budget-demo-2")


def test_istio_names_a_rule_namespace_name_index_and_a_named_rule_by_its_name_alone() -> None:
    # conversion.go: `obj.Namespace + "." + obj.Name + "." + pos`, or the rule's own name.
    assert route_matches(CHAT, "team-a.chat.0")
    assert route_matches(CHAT, "team-a.chat.12")
    assert route_matches(CHAT, "chat")  # a rule named `chat`: nothing says whose
    assert not route_matches(CHAT, "team-a.chat")  # no rule index
    assert not route_matches(CHAT, "team-a.chat.x")
    assert not route_matches(CHAT, "team-a.chat.0.extra")


def test_envoy_gateway_names_with_any_host_and_a_rule_without_matches() -> None:
    for host in ("*", "llm_example_com", "*_example_com", "api_v2_example_co_uk"):
        assert route_matches(CHAT, f"httproute/team-a/chat/rule/0/match/0/{host}")
    assert route_matches(CHAT, "httproute/team-a/chat/rule/3/match/-1/*")  # no matches
    assert route_matches(CHAT, "httproute/team-a/chat/rule/0/match/1")  # no host (older releases)
    assert not route_matches(CHAT, "grpcroute/team-a/chat/rule/0/match/0/*")
    assert not route_matches(CHAT, "httproute/team-a/chat/rules/0/match/0/*")
    assert not route_matches(CHAT, "httproute/team-a/chat-2/rule/0/match/0/*")


def test_names_with_dots_and_hyphens_match_exactly_on_namespace_and_name() -> None:
    assert not route_matches(CHAT, "team-a.chat-2.0")
    assert not route_matches(TargetRef("HTTPRoute", "chat", "team"), "team-a.chat-2.0")
    assert route_matches(TargetRef("HTTPRoute", "chat-2", "team-a"), "team-a.chat-2.0")
    dotted = TargetRef("HTTPRoute", "chat.v2", "team-a")
    assert route_matches(dotted, "team-a.chat.v2.0")
    assert route_matches(dotted, "team-a/chat.v2")
    assert route_matches(dotted, "httproute/team-a/chat.v2/rule/0/match/0/*")
    assert not route_matches(CHAT, "team-a.chat.v2.0")
    assert not route_matches(TargetRef("HTTPRoute", "v2", "team-a.chat"), "team-a.chat.v2.0")


_namespace = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?", fullmatch=True)
_route_name = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,8}[a-z0-9])?", fullmatch=True)


@given(ns=_namespace, name=_route_name, other_ns=_namespace, other_name=_route_name, rule=st.integers(0, 20))
def test_each_gateways_form_matches_its_own_httproute_and_no_other(
    ns: str, name: str, other_ns: str, other_name: str, rule: int
) -> None:
    for route in (f"{ns}.{name}.{rule}", f"{ns}/{name}", f"httproute/{ns}/{name}/rule/{rule}/match/0/*"):
        assert route_matches(TargetRef("HTTPRoute", name, ns), route)
        if (other_ns, other_name) != (ns, name) and other_name != route:
            assert not route_matches(TargetRef("HTTPRoute", other_name, other_ns), route)


def test_another_namespaces_route_of_the_same_name_is_not_matched() -> None:
    for name in ("team-b.chat.0", "team-b/chat", "httproute/team-b/chat/rule/0/match/0/*"):
        assert not route_matches(CHAT, name)
        assert route_matches(TargetRef("HTTPRoute", "chat", "team-b"), name)
    assert not route_matches(CHAT, "team-a-b.chat.0")


def test_a_gateway_ref_matches_only_the_routes_its_gateway_serves() -> None:
    ref = TargetRef(kind="Gateway", name="gw", namespace="team-a")
    assert route_matches(ref, "anything", gateway="team-a/gw")
    assert not route_matches(ref, "anything", gateway="team-a/other")
    assert not route_matches(ref, "anything", gateway="team-b/gw")
    assert not route_matches(ref, "anything", gateway="team-a/gw-2")


def test_a_gateway_ref_matches_nothing_when_the_request_names_no_gateway() -> None:
    assert not route_matches(TargetRef(kind="Gateway", name="gw", namespace="team-a"), "anything")
    assert not route_matches(TargetRef(kind="Gateway", name="gw", namespace="team-a"), "x", gateway="")


def test_an_httproute_ref_matches_on_every_gateway() -> None:
    assert route_matches(CHAT, "team-a.chat.0", gateway="team-z/elsewhere")


def test_the_index_answers_per_gateway_and_route() -> None:
    policy = EnforcementPolicy("team-a", "gw", (TargetRef("Gateway", "gw-a", "team-a"),))
    config = Config(
        budgets=(BudgetResource("team-a", "b", (entry("x", None, "b", "team-a"),)),), policies=(policy,)
    )
    index = BudgetIndex(config)
    assert index.for_route("team-a.api.0", "team-a/gw-a") is not None
    assert index.for_route("team-a.api.0", "team-a/gw-b") is None
    assert index.for_route("team-a.api.0") is None
    assert index.for_route("team-a.api.0", "team-a/gw-a") is not None  # cached apart


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


@given(
    a=st.dictionaries(st.sampled_from(["k1", "k2"]), st.text(min_size=1, max_size=6), min_size=2),
    b=st.dictionaries(st.sampled_from(["k1", "k2"]), st.text(min_size=1, max_size=6), min_size=2),
)
def test_different_subjects_never_share_a_counter_and_the_id_reads_back(
    a: dict[str, str], b: dict[str, str]
) -> None:
    e = entry("two", {"k1": "*", "k2": "*"}, "r")
    ca, cb = Charge(e, tuple(sorted(a.items()))), Charge(e, tuple(sorted(b.items())))
    assert (ca.counter_id == cb.counter_id) == (a == b)
    assert parse_subject(ca.counter_id) == ca.values


def test_a_very_long_subject_value_is_hashed_in_the_counter_id() -> None:
    e = entry("u", {"user": "*"}, "r")
    long_id = Charge(e, (("user", "x" * 5000),)).counter_id
    assert len(long_id) < 200
    assert long_id != Charge(e, (("user", "x" * 4999),)).counter_id
