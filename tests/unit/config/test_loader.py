"""The loader: Kubernetes-style YAML in, one frozen Config out, or every problem with its place."""

from __future__ import annotations

import os
import tempfile
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.catalog.model import CatalogDocument, UserRates, UserTier
from extproc.config import Config, ConfigError, load_config
from extproc.config.errors import Problem
from extproc.config.model import (
    Action,
    BudgetEntry,
    BudgetResource,
    Dimension,
    DimensionSource,
    DiscoveryMode,
    EnforcementPolicy,
    FailureMode,
    TargetRef,
    Unit,
    Window,
)
from extproc.usage.apis import API_NAMES
from tests.support.field_report import REPORT_BUDGET, REPORT_CATALOG, REPORT_GATEWAY, REPORT_TEAMS

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

NS = "agentgateway-system"


def _entry(resource: str, name: str, unit: Unit, amount: str, window: Window, action: Action, **subject: str):
    return BudgetEntry(NS, resource, name, unit, Decimal(amount), window, action, subject)


DEMO_ENTRIES = (
    _entry("budget-demo", "demo-usd-audit", Unit.USD, "5", Window.DAY, Action.AUDIT),
    _entry("budget-demo", "demo-token-block", Unit.TOKENS, "2000", Window.DAY, Action.BLOCK),
)
TEAM_ENTRIES = (
    _entry("team-budgets", "eng-monthly", Unit.USD, "500", Window.MONTH, Action.BLOCK, group="engineering"),
    _entry("team-budgets", "product-monthly", Unit.USD, "200", Window.MONTH, Action.BLOCK, group="product"),
    _entry("team-budgets", "everyone-else", Unit.USD, "100", Window.MONTH, Action.AUDIT, group="*"),
)
REPORT_CATALOG_DOCUMENT = CatalogDocument(
    source="agentgateway-system/model-cost-catalog:catalog.json",
    providers={
        "openai": {
            "gpt-4o": UserRates(input=Decimal("2.50"), output=Decimal("10.00")),
            "gpt-4o-mini": UserRates(input=Decimal("0.15"), output=Decimal("0.60")),
        }
    },
)
REPORT_POLICY = EnforcementPolicy(
    namespace=NS,
    name="budget-demo-enforcement",
    target_refs=(TargetRef(kind="HTTPRoute", name="budget-demo", namespace=NS),),
    discovery=DiscoveryMode.SAME,
    selector={},
    failure_mode=FailureMode.OPEN,
)

# Six lines, so the first budget entry written after it starts on line 7.
BUDGET_HEADER = """\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata:
  name: team
spec:
  budgets:
"""

VALID_ENTRY = """\
- name: ok
  limit: {unit: USD, amount: 5}
  window: {unit: Day}
  onBudgetExceeded: Block
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def budget(entries: str) -> str:
    """A Budget document whose first entry is on line 7."""
    return BUDGET_HEADER + textwrap.indent(textwrap.dedent(entries), "    ")


def problems(folder: Path, *paths: Path, catalog_files: tuple[Path, ...] = ()) -> list[str]:
    """The problem lines, file names relative to `folder` so a test can spell them out."""
    with pytest.raises(ConfigError) as caught:
        load_config(paths, catalog_files)
    return [str(problem).replace(f"{folder}{os.sep}", "") for problem in caught.value.problems]


def problems_in(tmp_path: Path, text: str, name: str = "b.yaml") -> list[str]:
    return problems(tmp_path, write(tmp_path, name, text))


# --- the field report loads unchanged -----------------------------------------------


def test_field_report_manifests_load_into_exactly_these_objects(tmp_path):
    write(tmp_path, "1-catalog.yaml", REPORT_CATALOG)
    write(tmp_path, "2-gateway.yaml", REPORT_GATEWAY)
    write(tmp_path, "3-budget.yaml", REPORT_BUDGET)
    write(tmp_path, "4-teams.yaml", REPORT_TEAMS)

    config = load_config([tmp_path])

    assert config == Config(
        budgets=(
            BudgetResource(NS, "budget-demo", DEMO_ENTRIES),
            BudgetResource(NS, "team-budgets", TEAM_ENTRIES),
        ),
        policies=(REPORT_POLICY,),
        dimensions={},
        catalogs=(REPORT_CATALOG_DOCUMENT,),
        namespace_labels={},
        sources=tuple(
            str(tmp_path / name)
            for name in ("1-catalog.yaml", "2-gateway.yaml", "3-budget.yaml", "4-teams.yaml")
        ),
    )
    usd, tokens = config.budgets[0].entries
    assert usd.limit_units == 5_000_000_000  # nano-USD
    assert tokens.limit_units == 2000
    assert usd.budget_id == "agentgateway-system/budget-demo/demo-usd-audit"
    rates = config.catalogs[0].providers["openai"]["gpt-4o"]
    assert rates.input == Decimal("2.50") and str(rates.input) == "2.50"  # exact, as written


def test_the_report_catalog_works_in_either_order_of_configmap_and_parameters(tmp_path):
    parameters, config_map = REPORT_CATALOG.split("---\n")
    write(tmp_path, "a.yaml", parameters)
    write(tmp_path, "b.yaml", config_map)
    assert load_config([tmp_path]).catalogs == (REPORT_CATALOG_DOCUMENT,)


def test_examples_folder_loads_without_problems():
    config = load_config([EXAMPLES])

    assert [(b.namespace, b.name) for b in config.budgets] == [(NS, "budget-demo"), (NS, "team-budgets")]
    assert config.budgets[0].entries == DEMO_ENTRIES
    assert config.budgets[1].entries == TEAM_ENTRIES
    assert config.policies == (REPORT_POLICY,)
    assert config.catalogs == (REPORT_CATALOG_DOCUMENT,)
    assert config.dimensions == {
        "group": Dimension("group", DimensionSource.HEADER, "x-team"),
        "user": Dimension("user", DimensionSource.HEADER, "x-user"),
    }
    assert [Path(s).name for s in config.sources] == [
        "budgets.yaml",
        "catalog.yaml",
        "dimensions.yaml",
        "teams.yaml",
    ]


def test_the_config_is_frozen(tmp_path):
    config = load_config([write(tmp_path, "b.yaml", REPORT_BUDGET)])
    with pytest.raises(TypeError):
        config.budgets[0].entries[0].subject["group"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.dimensions["x"] = Dimension("x", DimensionSource.HEADER, "x")  # type: ignore[index]


# --- budget entries -----------------------------------------------------------------


def test_amounts_convert_exactly_from_ints_floats_and_strings(tmp_path):
    text = budget(
        """\
        - name: a
          limit: {unit: USD, amount: "0.50"}
          window: {unit: Week}
          onBudgetExceeded: Audit
        - name: b
          limit: {unit: USD, amount: 0.1}
          window: {unit: Year}
          onBudgetExceeded: Block
        - name: c
          limit: {unit: Tokens, amount: "2000.0"}
          window: {unit: Month}
          onBudgetExceeded: Block
        - name: d
          limit: {unit: Tokens, amount: 4294967295}
          window: {unit: Day}
          onBudgetExceeded: Block
        - name: e
          limit: {unit: USD, amount: 0.000000001}
          window: {unit: Day}
          onBudgetExceeded: Block
        """
    )
    entries = load_config([write(tmp_path, "b.yaml", text)]).budgets[0].entries
    assert [e.amount for e in entries] == [
        Decimal("0.50"),
        Decimal("0.1"),
        Decimal("2000"),
        Decimal(2**32 - 1),
        Decimal("1E-9"),
    ]
    assert [e.limit_units for e in entries] == [500_000_000, 100_000_000, 2000, 2**32 - 1, 1]
    assert [e.window for e in entries] == [Window.WEEK, Window.YEAR, Window.MONTH, Window.DAY, Window.DAY]
    assert entries[0].namespace == "default"  # no metadata.namespace


def test_entry_name_must_be_alphanumeric_with_hyphens(tmp_path):
    text = budget(
        """\
        - name: Demo_USD
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Block
        - name: -edge
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        'b.yaml:7: spec.budgets[0].name: "Demo_USD" must be lower-case letters, digits and hyphens, '
        "starting and ending alphanumeric",
        'b.yaml:11: spec.budgets[1].name: "-edge" must be lower-case letters, digits and hyphens, '
        "starting and ending alphanumeric",
    ]


def test_at_most_sixteen_subject_keys(tmp_path):
    keys = ", ".join(f"k{i}: v" for i in range(17))
    text = budget(
        f"""\
        - name: wide
          subject: {{{keys}}}
          limit: {{unit: USD, amount: 5}}
          window: {{unit: Day}}
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        "b.yaml:8: spec.budgets[0].subject: at most 16 subject keys, got 17"
    ]


def test_sixteen_subject_keys_are_fine(tmp_path):
    subject = {f"k{i}": "v" for i in range(16)}
    text = budget(yaml.safe_dump([{**yaml.safe_load(VALID_ENTRY)[0], "subject": subject}]))
    assert load_config([write(tmp_path, "b.yaml", text)]).budgets[0].entries[0].subject == subject


def test_subject_keys_and_values_reject_pipe_caret_and_backtick(tmp_path):
    text = budget(
        """\
        - name: chars
          subject:
            gr|oup: engineering
            user: "a^b"
            team: "x`y"
            "": empty-key
            org: ""
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        'b.yaml:9: spec.budgets[0].subject.gr|oup: a subject key must not contain | (got "gr|oup")',
        'b.yaml:10: spec.budgets[0].subject.user: a subject value must not contain ^ (got "a^b")',
        'b.yaml:11: spec.budgets[0].subject.team: a subject value must not contain ` (got "x`y")',
        'b.yaml:12: spec.budgets[0].subject."": a subject key must not be empty',
        "b.yaml:13: spec.budgets[0].subject.org: a subject value must not be empty",
    ]


def test_subject_scalars_keep_their_yaml_spelling_but_null_lists_and_maps_are_problems(tmp_path):
    text = budget(
        """\
        - name: scalars
          subject: {tier: 5, code: 007, enabled: yes}
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Block
        """
    )
    entry = load_config([write(tmp_path, "ok.yaml", text)]).budgets[0].entries[0]
    assert dict(entry.subject) == {"tier": "5", "code": "007", "enabled": "yes"}

    text = budget(
        """\
        - name: shapes
          subject:
            user: null
            team: [a, b]
            org: {a: b}
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        "b.yaml:9: spec.budgets[0].subject.user: must be a string, got null",
        "b.yaml:10: spec.budgets[0].subject.team: must be a string, got a list",
        "b.yaml:11: spec.budgets[0].subject.org: must be a string, got a mapping",
    ]


def test_token_limits_are_whole_numbers_at_most_two_to_the_32_minus_one(tmp_path):
    text = budget(
        """\
        - name: big
          limit: {unit: Tokens, amount: 4294967296}
          window: {unit: Day}
          onBudgetExceeded: Block
        - name: half
          limit: {unit: Tokens, amount: 1.5}
          window: {unit: Day}
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        "b.yaml:8: spec.budgets[0].limit.amount: "
        "a token limit is at most 4294967295 (2^32-1), got 4294967296",
        "b.yaml:12: spec.budgets[1].limit.amount: a token limit must be a whole number, got 1.5",
    ]


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("0", "must be positive, got 0"),
        ("-5", "must be positive, got -5"),
        ('"-0.5"', "must be positive, got -0.5"),
        ('"five"', 'must be a number, got "five"'),
        ("true", "must be a number, got a boolean (true)"),
        (".nan", "must be a number, got .nan"),
        ("[5]", "must be a number, got a list"),
        ("0.0000000001", "a USD limit has at most 9 decimal places, got 0.0000000001"),
        ("1e10", "a USD limit is at most 9223372036.854775807, got 10000000000"),
    ],
)
def test_amounts_must_be_positive_numbers(tmp_path, amount, reason):
    text = budget(
        f"""\
        - name: amount
          limit:
            unit: USD
            amount: {amount}
          window: {{unit: Day}}
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [f"b.yaml:10: spec.budgets[0].limit.amount: {reason}"]


def test_unknown_units_windows_and_actions_list_the_allowed_values(tmp_path):
    text = budget(
        """\
        - name: words
          limit:
            unit: Dollars
            amount: 5
          window:
            unit: Fortnight
          onBudgetExceeded: block
        """
    )
    assert problems_in(tmp_path, text) == [
        'b.yaml:9: spec.budgets[0].limit.unit: unknown unit "Dollars"; expected one of: USD, Tokens',
        'b.yaml:12: spec.budgets[0].window.unit: unknown window "Fortnight"; '
        "expected one of: Day, Week, Month, Year",
        'b.yaml:13: spec.budgets[0].onBudgetExceeded: unknown action "block"; expected one of: Audit, Block',
    ]


def test_duplicate_entry_names_in_one_resource(tmp_path):
    text = budget(VALID_ENTRY + VALID_ENTRY)
    assert problems_in(tmp_path, text) == [
        'b.yaml:11: spec.budgets[1].name: duplicate entry name "ok" (first at line 7)'
    ]


def test_unknown_fields_in_an_entry_are_rejected_with_a_guess(tmp_path):
    text = budget(
        """\
        - name: typo
          limit: {unit: USD, amount: 5, currency: EUR}
          window: {unit: Day}
          onBudgetExeeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        "b.yaml:7: spec.budgets[0].onBudgetExceeded: is required",
        "b.yaml:8: spec.budgets[0].limit.currency: unknown field; expected one of: unit, amount",
        'b.yaml:10: spec.budgets[0].onBudgetExeeded: unknown field (did you mean "onBudgetExceeded"?); '
        "expected one of: name, subject, limit, window, onBudgetExceeded, notifyAt",
    ]


def test_wrong_types_and_missing_fields(tmp_path):
    text = BUDGET_HEADER.replace("  budgets:\n", "  budgets: {name: x}\n")
    assert problems_in(tmp_path, text) == ["b.yaml:6: spec.budgets: must be a list, got a mapping"]

    text = budget(
        """\
        - just a string
        - name: bare
        """
    )
    assert problems_in(tmp_path, text) == [
        'b.yaml:7: spec.budgets[0]: must be a mapping, got "just a string"',
        "b.yaml:8: spec.budgets[1].limit: is required",
        "b.yaml:8: spec.budgets[1].window: is required",
        "b.yaml:8: spec.budgets[1].onBudgetExceeded: is required",
    ]


def test_every_problem_is_listed_not_just_the_first(tmp_path):
    text = budget(
        """\
        - name: Bad
          limit: {unit: Euro, amount: -1}
          window: {unit: Day}
          onBudgetExceeded: Block
        - name: tok
          limit: {unit: Tokens, amount: 0.5}
          window: {unit: Hour}
          onBudgetExceeded: Block
        """
    )
    found = problems_in(tmp_path, text)
    assert [line.split(": ")[0] for line in found] == [
        "b.yaml:7",
        "b.yaml:8",
        "b.yaml:8",
        "b.yaml:12",
        "b.yaml:13",
    ]


def test_problem_prints_as_file_line_path_reason():
    problem = Problem("budgets.yaml", 12, "spec.budgets[1].limit.amount", "must be positive, got 0")
    assert str(problem) == "budgets.yaml:12: spec.budgets[1].limit.amount: must be positive, got 0"
    assert str(ConfigError([problem, problem])) == f"{problem}\n{problem}"


# --- resources and documents --------------------------------------------------------


def test_two_resources_of_the_same_kind_namespace_and_name_are_rejected(tmp_path):
    first = write(tmp_path, "a.yaml", budget(VALID_ENTRY))
    second = write(tmp_path, "b.yaml", budget(VALID_ENTRY))
    assert problems(tmp_path, first, second) == [
        'b.yaml:4: metadata.name: Budget "default/team" is defined twice (first at a.yaml:4)'
    ]


def test_both_budget_kinds_share_one_name_space_because_they_share_budget_ids(tmp_path):
    ours = write(tmp_path, "a.yaml", budget(VALID_ENTRY))
    theirs = write(
        tmp_path,
        "b.yaml",
        budget(VALID_ENTRY).replace(
            "budgets.extproc.dev/v1alpha1\nkind: Budget",
            "enterpriseagentgateway.solo.io/v1alpha1\nkind: EnterpriseAgentgatewayBudget",
        ),
    )
    assert problems(tmp_path, ours, theirs) == [
        'b.yaml:4: metadata.name: EnterpriseAgentgatewayBudget "default/team" '
        "is defined twice (first at a.yaml:4)"
    ]


def test_the_same_name_in_another_namespace_is_another_resource(tmp_path):
    other = budget(VALID_ENTRY).replace("  name: team\n", "  name: team\n  namespace: other\n")
    config = load_config([write(tmp_path, "a.yaml", budget(VALID_ENTRY)), write(tmp_path, "b.yaml", other)])
    assert [(b.namespace, b.name) for b in config.budgets] == [("default", "team"), ("other", "team")]


def test_metadata_name_is_required_and_labels_are_kept(tmp_path):
    text = budget(VALID_ENTRY).replace("  name: team\n", "  labels: {team: a}\n")
    assert problems_in(tmp_path, text) == ["b.yaml:3: metadata.name: is required"]

    text = budget(VALID_ENTRY).replace("  name: team\n", "  name: team\n  labels: {team: a, tier: 1}\n")
    resource = load_config([write(tmp_path, "ok.yaml", text)]).budgets[0]
    assert dict(resource.labels) == {"team": "a", "tier": "1"}


def test_documents_need_a_mapping_with_kind_and_api_version(tmp_path):
    text = """\
        - a list
        ---
        kind: Budget
        ---
        apiVersion: v1
        ---
        just text
        """
    assert problems_in(tmp_path, text) == [
        "b.yaml:1: (document): a document must be a mapping with apiVersion and kind, got a list",
        "b.yaml:3: apiVersion: is required",
        "b.yaml:5: kind: is required",
        'b.yaml:7: (document): a document must be a mapping with apiVersion and kind, got "just text"',
    ]


def test_another_version_of_one_of_our_kinds_is_a_problem(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1beta1
        kind: EnterpriseAgentgatewayBudget
        metadata: {name: x}
        """
    assert problems_in(tmp_path, text) == [
        "b.yaml:1: apiVersion: unsupported for EnterpriseAgentgatewayBudget; "
        "expected enterpriseagentgateway.solo.io/v1alpha1"
    ]


def test_other_kinds_are_ignored_and_empty_documents_skipped(tmp_path):
    text = """\
        ---
        # only a comment
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: anything}
        spec: {replicas: [not, checked]}
        ---
        apiVersion: someone.else.io/v1
        kind: Budget
        spec: 42
        ---
        """
    config = load_config([write(tmp_path, "b.yaml", text)])
    assert config.budgets == () and config.policies == ()


def test_a_kubectl_list_is_read_item_by_item(tmp_path):
    items = yaml.safe_load(REPORT_BUDGET.split("---\n")[0])
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [items, {"kind": "Budget"}]})
    assert problems_in(tmp_path, text) == ["b.yaml:24: items[1].apiVersion: is required"]
    ok = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [items]})
    assert load_config([write(tmp_path, "ok.yaml", ok)]).budgets[0].entries == DEMO_ENTRIES


def test_invalid_yaml_is_one_problem_at_the_marks_line_and_earlier_documents_still_count(tmp_path):
    text = (
        budget(VALID_ENTRY) + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   bad: indent\n"
    )
    found = problems_in(tmp_path, text)
    assert found == ["b.yaml:16: (yaml): invalid YAML: mapping values are not allowed here"]

    text = budget(VALID_ENTRY + VALID_ENTRY) + "---\nkey: [unclosed\n"
    found = problems_in(tmp_path, text)
    assert found[0] == 'b.yaml:11: spec.budgets[1].name: duplicate entry name "ok" (first at line 7)'
    assert (
        found[1] == "b.yaml:17: (yaml): invalid YAML: "
        "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)"
    )


def test_duplicate_keys_in_a_mapping_are_reported(tmp_path):
    text = budget(
        """\
        - name: dup
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Audit
          onBudgetExceeded: Block
        """
    )
    assert problems_in(tmp_path, text) == [
        "b.yaml:11: spec.budgets[0].onBudgetExceeded: duplicate key (first at line 10)"
    ]


def test_anchors_and_merge_keys_work(tmp_path):
    text = budget(
        """\
        - &base
          name: a
          limit: {unit: USD, amount: 5}
          window: {unit: Day}
          onBudgetExceeded: Block
        - <<: *base
          name: b
        """
    )
    entries = load_config([write(tmp_path, "b.yaml", text)]).budgets[0].entries
    assert [(e.name, e.amount) for e in entries] == [("a", Decimal("5")), ("b", Decimal("5"))]


def test_a_file_that_cannot_be_read_is_a_problem_at_line_zero(tmp_path):
    missing = tmp_path / "missing.yaml"
    (tmp_path / "latin1.yaml").write_bytes(b"kind: \xe9\n")
    assert problems(tmp_path, missing, tmp_path / "latin1.yaml") == [
        "missing.yaml:0: (file): cannot read: No such file or directory",
        "latin1.yaml:0: (file): cannot read: not UTF-8 text",
    ]


# --- policies -----------------------------------------------------------------------


def test_enterprise_policies_without_budget_enforcement_are_ignored(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentgatewayPolicy
        metadata: {name: cors, namespace: gw}
        spec:
          targetRefs: [{kind: HTTPRoute, name: r}]
          traffic: {cors: {allowOrigins: ["*"]}}
        """
    assert load_config([write(tmp_path, "p.yaml", text)]).policies == ()


def test_enterprise_policy_options_gateway_targets_and_failure_mode(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentgatewayPolicy
        metadata: {name: all-teams, namespace: gw}
        spec:
          targetRefs:
            - {group: gateway.networking.k8s.io, kind: Gateway, name: proxy}
            - {kind: HTTPRoute, name: chat, namespace: gw}
          traffic:
            entBudgetEnforcement:
              failureMode: Closed
              discovery:
                namespaces:
                  from: Selector
                  selector: {matchLabels: {budgets: enabled}}
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert policy == EnforcementPolicy(
        namespace="gw",
        name="all-teams",
        target_refs=(TargetRef("Gateway", "proxy", "gw"), TargetRef("HTTPRoute", "chat", "gw")),
        discovery=DiscoveryMode.SELECTOR,
        selector={"budgets": "enabled"},
        failure_mode=FailureMode.CLOSED,
    )


def test_target_refs_are_local_to_the_policy_namespace(tmp_path):
    """Policy attachment (GEP-713): a team's policy cannot cap another namespace's routes."""
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: p, namespace: team-x}
        spec:
          targetRefs:
            - {kind: HTTPRoute, name: chat, namespace: team-y}
        """
    assert problems_in(tmp_path, text) == [
        "b.yaml:6: spec.targetRefs[0].namespace: targetRefs are local to the policy's namespace "
        '"team-x", got "team-y"; create the policy in the target\'s namespace'
    ]


def test_budget_policy_takes_the_report_discovery_shape_too(tmp_path):
    """A policy converted from the report's kind keeps `discovery.namespaces`; mixing shapes is refused."""
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: p, namespace: gw}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          discovery:
            namespaces:
              from: Selector
              selector: {matchLabels: {budgets: enabled}}
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert (policy.discovery, dict(policy.selector)) == (DiscoveryMode.SELECTOR, {"budgets": "enabled"})
    mixed = text.replace("          discovery:\n", "          discovery:\n            from: All\n")
    assert problems_in(tmp_path, mixed) == [
        "b.yaml:7: spec.discovery.from: set either namespaces (the field report's shape) or "
        "from/selector, not both"
    ]


def test_enterprise_policy_problems(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentgatewayPolicy
        metadata: {name: p}
        spec:
          traffic:
            entBudgetEnforcement:
              failureMode: open
              discovery:
                namespaces: {from: Everywhere}
        """
    assert problems_in(tmp_path, text) == [
        "b.yaml:4: spec.targetRefs: is required",
        'b.yaml:7: spec.traffic.entBudgetEnforcement.failureMode: unknown failure mode "open"; '
        "expected one of: Open, Closed",
        "b.yaml:9: spec.traffic.entBudgetEnforcement.discovery.namespaces.from: "
        'unknown discovery mode "Everywhere"; expected one of: Same, Selector, All',
    ]


def test_budget_policy_reads_target_refs_discovery_and_failure_mode(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: enforce, namespace: platform}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          discovery: {from: All}
          failureMode: Closed
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert policy == EnforcementPolicy(
        "platform",
        "enforce",
        (TargetRef("HTTPRoute", "chat", "platform"),),
        DiscoveryMode.ALL,
        {},
        FailureMode.CLOSED,
    )


def test_budget_policy_problems(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: p}
        spec:
          targetRefs:
            - {kind: Service, name: x}
            - {group: example.com, kind: HTTPRoute, name: y, sectionName: rule-1}
            - {kind: Gateway}
          discovery: {from: Selector}
          failureMod: Closed
        ---
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: q}
        spec:
          targetRefs: []
          discovery:
            from: Same
            selector: {matchLabels: {a: b}, matchExpressions: []}
        """
    assert problems_in(tmp_path, text) == [
        'b.yaml:6: spec.targetRefs[0].kind: unknown kind "Service"; expected one of: HTTPRoute, Gateway',
        "b.yaml:7: spec.targetRefs[1].sectionName: is not supported: target a whole route",
        'b.yaml:7: spec.targetRefs[1].group: unknown group "example.com"; '
        "expected one of: gateway.networking.k8s.io",
        "b.yaml:8: spec.targetRefs[2].name: is required",
        "b.yaml:9: spec.discovery.selector: is required when from is Selector",
        'b.yaml:10: spec.failureMod: unknown field (did you mean "failureMode"?); '
        "expected one of: targetRefs, discovery, failureMode, provider, api, estimateUsage, rateLimitHeaders",
        "b.yaml:16: spec.targetRefs: needs at least one HTTPRoute or Gateway",
        "b.yaml:19: spec.discovery.selector.matchExpressions: is not supported; use matchLabels",
        "b.yaml:19: spec.discovery.selector: only applies when from is Selector (from is Same)",
    ]


def test_budget_policy_route_settings_override_provider_and_api_and_ask_for_estimates(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: self-hosted, namespace: ml}
        spec:
          targetRefs: [{kind: HTTPRoute, name: vllm}]
          provider: OpenAI
          api: openai.chat
          estimateUsage: true
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert policy == EnforcementPolicy(
        "ml",
        "self-hosted",
        (TargetRef("HTTPRoute", "vllm", "ml"),),
        provider="openai",  # lower-cased, as path detection names providers
        api="openai.chat",
        estimate_usage=True,
    )


def test_route_settings_default_to_detection_and_no_estimates(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: p}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          estimateUsage: false
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert (policy.provider, policy.api, policy.estimate_usage) == (None, None, False)


@pytest.mark.parametrize("api", API_NAMES)
def test_every_api_name_is_accepted(tmp_path, api):
    text = f"""\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {{name: p}}
        spec:
          targetRefs: [{{kind: HTTPRoute, name: chat}}]
          api: {api}
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert policy.api == api


def test_route_settings_problems(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: p}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          provider: "open|ai"
          api: openai.chat.completions
          estimateUsage: "true"
        ---
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: q}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          provider: 42
          api: [openai.chat]
          estimateUsage: 1
          estimate_usage: true
        ---
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: r}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          provider: "  "
        """
    allowed = ", ".join(API_NAMES)
    assert problems_in(tmp_path, text) == [
        'b.yaml:6: spec.provider: a provider must not contain | (got "open|ai")',
        f'b.yaml:7: spec.api: unknown api "openai.chat.completions"; expected one of: {allowed}',
        'b.yaml:8: spec.estimateUsage: must be true or false, got "true"',
        "b.yaml:15: spec.provider: must be a string, got 42",
        f"b.yaml:16: spec.api: must be one of: {allowed}; got a list",
        "b.yaml:17: spec.estimateUsage: must be true or false, got 1",
        'b.yaml:18: spec.estimate_usage: unknown field (did you mean "estimateUsage"?); '
        "expected one of: targetRefs, discovery, failureMode, provider, api, estimateUsage, rateLimitHeaders",
        "b.yaml:25: spec.provider: a provider must not be empty",
    ]


def test_enterprise_policy_accepts_the_route_settings_as_our_extension(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentgatewayPolicy
        metadata: {name: azure-budgets, namespace: gw}
        spec:
          targetRefs: [{kind: HTTPRoute, name: azure-chat}]
          traffic:
            entBudgetEnforcement:
              provider: azure
              api: openai.responses
              estimateUsage: true
        """
    (policy,) = load_config([write(tmp_path, "p.yaml", text)]).policies
    assert policy == EnforcementPolicy(
        "gw",
        "azure-budgets",
        (TargetRef("HTTPRoute", "azure-chat", "gw"),),
        provider="azure",
        api="openai.responses",
        estimate_usage=True,
    )


def test_enterprise_policy_route_settings_problems(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentgatewayPolicy
        metadata: {name: p}
        spec:
          targetRefs: [{kind: HTTPRoute, name: r}]
          traffic:
            entBudgetEnforcement:
              api: gemini
              estimateUsage: null
              apis: openai.chat
        """
    assert problems_in(tmp_path, text) == [
        'b.yaml:8: spec.traffic.entBudgetEnforcement.api: unknown api "gemini"; '
        f"expected one of: {', '.join(API_NAMES)}",
        'b.yaml:10: spec.traffic.entBudgetEnforcement.apis: unknown field (did you mean "api"?); '
        "expected one of: discovery, failureMode, provider, api, estimateUsage, rateLimitHeaders",
    ]


def test_namespaces_give_their_labels_for_selector_discovery(tmp_path):
    text = """\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: team-a
          labels: {budgets: enabled}
        """
    config = load_config([write(tmp_path, "ns.yaml", text)])
    # Kubernetes adds the name label to every namespace; so do we, so selectors carry over.
    assert config.namespace_labels == {
        "team-a": {"budgets": "enabled", "kubernetes.io/metadata.name": "team-a"}
    }


# --- catalogs -----------------------------------------------------------------------


def _catalog_config_map(body: str, key: str = "catalog.json") -> str:
    return (
        "apiVersion: enterpriseagentgateway.solo.io/v1alpha1\n"
        "kind: EnterpriseAgentgatewayParameters\n"
        "metadata: {name: params, namespace: gw}\n"
        "spec:\n"
        "  modelCatalog:\n"
        f"    sources: [{{configMap: {{name: costs, key: {key}}}}}]\n"
        "---\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata: {name: costs, namespace: gw}\n"
        "data:\n"
        f"  {key}: |\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )


def test_catalog_problems_carry_the_configmap_key_line_and_the_path_inside(tmp_path):
    text = _catalog_config_map(
        """\
        {"providers": {"openai": {"models": {
          "gpt-4o": {"rates": {"input": "-1", "output": "ten", "cache_read": "1"}},
          "o1": {"price": {}}
        }}}}
        """
    )
    at = "b.yaml:12: data.catalog.json: providers.openai.models.gpt-4o.rates"
    assert problems_in(tmp_path, text) == [
        f'{at}.cache_read: unknown field (did you mean "cacheRead"?); '
        "expected one of: input, output, cacheRead, cacheWrite, reasoning, tiers",
        f"{at}.input: a rate must not be negative, got -1",
        f'{at}.output: must be a number, got "ten"',
        "b.yaml:12: data.catalog.json: providers.openai.models.o1.rates: is required",
    ]


def test_catalog_names_are_lower_cased_and_numbers_and_optional_rates_accepted(tmp_path):
    text = _catalog_config_map(
        """\
        providers:
          OpenAI:
            models:
              GPT-4o: {rates: {input: 2.5, output: 10, cacheRead: "1.25", cacheWrite: 0, reasoning: "10"}}
        """,
        key="catalog.yaml",
    )
    (document,) = load_config([write(tmp_path, "c.yaml", text)]).catalogs
    assert document == CatalogDocument(
        "gw/costs:catalog.yaml",
        {
            "openai": {
                "gpt-4o": UserRates(
                    Decimal("2.5"), Decimal("10"), Decimal("1.25"), Decimal("0"), Decimal("10")
                )
            }
        },
    )


def test_catalog_json_indented_with_tabs_still_loads(tmp_path):
    text = _catalog_config_map(
        '{\n\t"providers": {"x": {"models": {"m": {"rates": {"input": 1, "output": 2}}}}}\n}\n'
    )
    (document,) = load_config([write(tmp_path, "c.yaml", text)]).catalogs
    assert document.providers["x"]["m"] == UserRates(Decimal("1"), Decimal("2"))


def test_catalog_tiers_load_sorted_by_threshold_with_omitted_rates_left_none(tmp_path):
    text = _catalog_config_map(
        """\
        {"providers": {"anthropic": {"models": {"claude-sonnet-4-5": {"rates": {
          "input": "3.00", "output": "15.00", "cacheRead": "0.30", "cacheWrite": "3.75",
          "tiers": [
            {"inputTokensAbove": 1000000, "input": "12", "output": "45"},
            {"inputTokensAbove": 200000, "input": "6.00", "output": "22.50",
             "cacheRead": "0.60", "cacheWrite": "7.50", "reasoning": "30"}
          ]
        }}}}}}
        """
    )
    (document,) = load_config([write(tmp_path, "c.yaml", text)]).catalogs
    assert document.providers["anthropic"]["claude-sonnet-4-5"] == UserRates(
        Decimal("3.00"),
        Decimal("15.00"),
        Decimal("0.30"),
        Decimal("3.75"),
        None,
        (
            UserTier(
                200_000, Decimal("6.00"), Decimal("22.50"), Decimal("0.60"), Decimal("7.50"), Decimal("30")
            ),
            UserTier(1_000_000, Decimal("12"), Decimal("45")),
        ),
    )


def test_catalog_tiers_in_yaml_take_numbers_and_numeric_strings(tmp_path):
    path = write(
        tmp_path,
        "prices.yaml",
        """\
        providers:
          google:
            models:
              gemini-2.5-pro:
                rates:
                  input: 1.25
                  output: 10
                  tiers:
                    - {inputTokensAbove: "200000", input: 2.5, output: 15}
        """,
    )
    (document,) = load_config([], [path]).catalogs
    assert document.providers["google"]["gemini-2.5-pro"].tiers == (
        UserTier(200_000, Decimal("2.5"), Decimal("15")),
    )


def test_catalog_tier_problems(tmp_path):
    path = write(
        tmp_path,
        "prices.yaml",
        """\
        providers:
          acme:
            models:
              a:
                rates:
                  input: 1
                  output: 1
                  tiers:
                    - {inputTokensAbove: 200000, input: 2, output: 2}
                    - {inputTokensAbove: 200000, input: 3, output: 3}
                    - {inputTokensAbove: 0, input: 2, output: 2}
                    - {inputTokensAbove: 1.5, input: 2, output: 2}
                    - {inputTokensAbove: -10, input: 2, output: 2}
                    - {inputTokensAbove: 1e12, input: 2, output: 2}
                    - {input: 2, output: 2, cache_read: 1}
                    - {inputTokensAbove: 300000, input: "-2"}
                    - 400000
              b:
                rates: {input: 1, output: 1, tiers: {inputTokensAbove: 5}}
        """,
    )
    at = "prices.yaml:{}: providers.acme.models.{}.rates.tiers"
    tier_fields = "inputTokensAbove, input, output, cacheRead, cacheWrite, reasoning"
    assert problems(tmp_path, catalog_files=(path,)) == [
        at.format(10, "a") + "[1].inputTokensAbove: 200000 is already the threshold of "
        "providers.acme.models.a.rates.tiers[0]",
        at.format(11, "a") + "[2].inputTokensAbove: must be a positive whole number of input tokens, got 0",
        at.format(12, "a") + "[3].inputTokensAbove: must be a positive whole number of input tokens, got 1.5",
        at.format(13, "a") + "[4].inputTokensAbove: must be a positive whole number of input tokens, got -10",
        at.format(14, "a") + "[5].inputTokensAbove: is at most 4294967295 (2^32-1), got 1000000000000",
        at.format(15, "a")
        + f'[6].cache_read: unknown field (did you mean "cacheRead"?); expected one of: {tier_fields}',
        at.format(15, "a") + "[6].inputTokensAbove: is required",
        at.format(16, "a") + "[7].input: a rate must not be negative, got -2",
        at.format(16, "a") + "[7].output: is required",
        at.format(17, "a") + "[8]: must be a mapping, got 400000",
        at.format(19, "b") + ": must be a list, got a mapping",
    ]


def test_invalid_catalog_text_is_reported_at_the_configmap_key(tmp_path):
    text = _catalog_config_map('{"providers": {"x": \n')
    found = problems_in(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("b.yaml:12: data.catalog.json: is neither valid YAML nor JSON: ")


def test_parameters_naming_a_missing_configmap_or_key(tmp_path):
    text = """\
        apiVersion: agentgateway.dev/v1alpha1
        kind: EnterpriseAgentgatewayParameters
        metadata: {name: params, namespace: gw}
        spec:
          modelCatalog:
            sources:
              - configMap: {name: nowhere, key: catalog.json}
              - configMap:
                  name: costs
                  key: prices.json
              - secret: {name: costs}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: costs, namespace: gw}
        data: {catalog.json: "{}"}
        """
    assert problems_in(tmp_path, text) == [
        'b.yaml:7: spec.modelCatalog.sources[0].configMap: ConfigMap "gw/nowhere" '
        "is not in the configuration",
        "b.yaml:10: spec.modelCatalog.sources[1].configMap.key: "
        'ConfigMap "gw/costs" has no key "prices.json"',
        "b.yaml:11: spec.modelCatalog.sources[2].secret: unknown field; expected one of: configMap",
        "b.yaml:11: spec.modelCatalog.sources[2].configMap: is required",
    ]


def test_parameters_may_name_a_configmap_in_another_namespace(tmp_path):
    text = REPORT_CATALOG.replace("key: catalog.json", "key: catalog.json\n          namespace: pricing")
    text = text.replace("  namespace: agentgateway-system\ndata:", "  namespace: pricing\ndata:")
    (document,) = load_config([write(tmp_path, "c.yaml", text)]).catalogs
    assert document.source == "pricing/model-cost-catalog:catalog.json"


def test_catalog_files_come_after_configmap_catalogs_in_order(tmp_path):
    write(tmp_path, "conf/catalog.yaml", REPORT_CATALOG)
    first = write(
        tmp_path,
        "first.json",
        '{"providers": {"openai": {"models": {"gpt-4o": {"rates": {"input": "1", "output": "2"}}}}}}',
    )
    second = write(
        tmp_path,
        "second.yaml",
        """\
        providers:
          anthropic:
            models:
              claude-sonnet-4: {rates: {input: "3", output: "15"}}
        """,
    )
    config = load_config([tmp_path / "conf"], [first, second])
    assert [doc.source for doc in config.catalogs] == [
        "agentgateway-system/model-cost-catalog:catalog.json",
        str(first),
        str(second),
    ]
    assert config.sources[-2:] == (str(first), str(second))


def test_catalog_file_problems_have_real_lines(tmp_path):
    path = write(
        tmp_path,
        "prices.yaml",
        """\
        providers:
          openai:
            models:
              gpt-4o:
                rates:
                  input: "2.50"
              GPT-4O:
                rates: {input: 1, output: 1}
        """,
    )
    assert problems(tmp_path, catalog_files=(path,)) == [
        "prices.yaml:5: providers.openai.models.gpt-4o.rates.output: is required",
        "prices.yaml:7: providers.openai.models.GPT-4O: is listed twice (names ignore case)",
    ]
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    assert problems(tmp_path, catalog_files=(empty,)) == [
        "empty.yaml:1: (document): is empty; expected a catalog with providers"
    ]


# --- dimensions ---------------------------------------------------------------------


def test_dimensions_from_headers_metadata_and_attributes_merge_across_resources(tmp_path):
    write(
        tmp_path,
        "a.yaml",
        """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetDimensions
        metadata: {name: identity}
        spec:
          dimensions:
            group: {header: X-Team}
            user:
              metadata: {namespace: envoy.filters.http.jwt_authn, path: [jwt_payload, sub]}
        """,
    )
    write(
        tmp_path,
        "b.yaml",
        """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetDimensions
        metadata: {name: network}
        spec:
          dimensions:
            client: {attribute: source.address}
        """,
    )
    assert load_config([tmp_path]).dimensions == {
        "group": Dimension("group", DimensionSource.HEADER, "x-team"),
        "user": Dimension(
            "user", DimensionSource.METADATA, "envoy.filters.http.jwt_authn", ("jwt_payload", "sub")
        ),
        "client": Dimension("client", DimensionSource.ATTRIBUTE, "source.address"),
    }


SOURCES = "header, metadata, attribute, body, apiKey"


def test_dimension_problems(tmp_path):
    first = write(
        tmp_path,
        "a.yaml",
        """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetDimensions
        metadata: {name: a}
        spec:
          dimensions:
            group: {header: x-team}
        """,
    )
    second = write(
        tmp_path,
        "b.yaml",
        """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetDimensions
        metadata: {name: b}
        spec:
          dimensions:
            group: {header: x-group}
            model: {header: x-model}
            team: {header: "x team"}
            user: {header: x-user, attribute: source.address}
            sub: {metadata: {namespace: jwt, path: []}}
            org: {cookie: org}
            "a|b": {header: x}
        """,
    )
    assert problems(tmp_path, first, second) == [
        'b.yaml:6: spec.dimensions.group: dimension "group" is already defined at a.yaml:6',
        'b.yaml:7: spec.dimensions.model: "model" is built in and cannot be redefined',
        'b.yaml:8: spec.dimensions.team.header: "x team" is not an HTTP header name',
        f"b.yaml:9: spec.dimensions.user: set exactly one of: {SOURCES}",
        "b.yaml:10: spec.dimensions.sub.metadata.path: needs at least one key",
        f"b.yaml:11: spec.dimensions.org.cookie: unknown field; expected one of: {SOURCES}, split",
        f"b.yaml:11: spec.dimensions.org: set exactly one of: {SOURCES}",
        'b.yaml:12: spec.dimensions.a|b: a dimension key must not contain | (got "a|b")',
    ]


def test_body_api_key_and_split_dimensions(tmp_path):
    path = write(
        tmp_path,
        "d.yaml",
        """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetDimensions
        metadata: {name: identity}
        spec:
          dimensions:
            groups:
              metadata: {namespace: envoy.filters.http.jwt_authn, path: [jwt_payload, groups]}
            scopes:
              metadata: {namespace: envoy.filters.http.jwt_authn, path: [jwt_payload, scope]}
              split: " "
            teams: {header: X-Teams, split: ","}
            end-user: {body: [user]}
            anthropic-user: {body: [metadata, user_id]}
            key: {apiKey: {}}
            azure-key: {apiKey: {header: Api-Key}}
        """,
    )
    jwt = "envoy.filters.http.jwt_authn"
    assert load_config([path]).dimensions == {
        "groups": Dimension("groups", DimensionSource.METADATA, jwt, ("jwt_payload", "groups")),
        "scopes": Dimension("scopes", DimensionSource.METADATA, jwt, ("jwt_payload", "scope"), split=" "),
        "teams": Dimension("teams", DimensionSource.HEADER, "x-teams", split=","),
        "end-user": Dimension("end-user", DimensionSource.BODY, "", ("user",)),
        "anthropic-user": Dimension("anthropic-user", DimensionSource.BODY, "", ("metadata", "user_id")),
        "key": Dimension("key", DimensionSource.API_KEY, "authorization"),
        "azure-key": Dimension("azure-key", DimensionSource.API_KEY, "api-key"),
    }


def test_body_api_key_and_split_problems(tmp_path):
    assert problems_in(
        tmp_path,
        """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetDimensions
        metadata: {name: d}
        spec:
          dimensions:
            a: {body: user}
            b: {body: []}
            c: {body: [metadata, 7]}
            d: {apiKey: {header: x-user}}
            e: {apiKey: x-api-key}
            f: {apiKey: {header: authorization, prefix: Bearer}}
            g: {apiKey: {}, split: ","}
            h: {header: x-teams, split: ""}
            i: {header: x-teams, split: 1}
            j: {body: [user], apiKey: {}}
            k: {apiKey: }
        """,
    ) == [
        'b.yaml:6: spec.dimensions.a.body: must be a list, got "user"',
        "b.yaml:7: spec.dimensions.b.body: needs at least one key",
        "b.yaml:8: spec.dimensions.c.body[1]: must be a string, got 7",
        'b.yaml:9: spec.dimensions.d.apiKey.header: "x-user" is not a header that carries an API key;'
        " expected one of: authorization, x-api-key, api-key, x-goog-api-key",
        'b.yaml:10: spec.dimensions.e.apiKey: must be a mapping, got "x-api-key"',
        "b.yaml:11: spec.dimensions.f.apiKey.prefix: unknown field; expected one of: header",
        "b.yaml:12: spec.dimensions.g.split: an API key is one value and cannot be split",
        "b.yaml:13: spec.dimensions.h.split: must not be empty",
        "b.yaml:14: spec.dimensions.i.split: must be a string, got 1",
        f"b.yaml:15: spec.dimensions.j: set exactly one of: {SOURCES}",
        "b.yaml:16: spec.dimensions.k.apiKey: is required",
    ]


# --- files and folders --------------------------------------------------------------


def test_folders_are_read_recursively_in_name_order_skipping_hidden_and_other_files(tmp_path):
    write(tmp_path, "conf/10-budget.yaml", budget(VALID_ENTRY))
    write(tmp_path, "conf/20/policy.yml", REPORT_BUDGET.split("---\n")[1])
    write(
        tmp_path,
        "conf/30-dims.json",
        '{"apiVersion": "budgets.extproc.dev/v1alpha1", "kind": "BudgetDimensions",'
        ' "metadata": {"name": "d"}, "spec": {"dimensions": {"group": {"header": "x-team"}}}}',
    )
    write(tmp_path, "conf/.swap.yaml", "not: [valid")
    write(tmp_path, "conf/.git/config.yaml", "not: [valid")
    write(tmp_path, "conf/README.md", "# not config")
    config = load_config([tmp_path / "conf"])
    assert config.sources == tuple(
        str(tmp_path / "conf" / name) for name in ("10-budget.yaml", "20/policy.yml", "30-dims.json")
    )
    assert len(config.budgets) == 1 and len(config.policies) == 1 and "group" in config.dimensions


def test_a_mounted_configmap_is_read_once_through_its_visible_names(tmp_path):
    # What the kubelet writes: the data in a timestamped folder, `..data` linking to it,
    # and each key as a visible symlink through `..data`.
    mount = tmp_path / "mount"
    stamped = mount / "..2024_06_01_12_00_00.123456789"
    write(stamped, "budgets.yaml", REPORT_BUDGET)
    write(stamped, "catalog.yaml", REPORT_CATALOG)
    (mount / "..data").symlink_to(stamped.name)
    for name in ("budgets.yaml", "catalog.yaml"):
        (mount / name).symlink_to(f"..data/{name}")

    config = load_config([mount])

    assert config.sources == (str(mount / "budgets.yaml"), str(mount / "catalog.yaml"))
    assert [b.name for b in config.budgets] == ["budget-demo"]
    assert config.catalogs == (REPORT_CATALOG_DOCUMENT,)


def test_a_file_named_twice_is_read_once(tmp_path):
    path = write(tmp_path, "conf/b.yaml", budget(VALID_ENTRY))
    config = load_config([path, tmp_path / "conf", path])
    assert config.sources == (str(path),)


def test_problems_are_ordered_by_file_then_line(tmp_path):
    write(
        tmp_path,
        "a.yaml",
        REPORT_CATALOG.replace("name: model-cost-catalog\n  namespace", "name: renamed\n  namespace"),
    )
    write(tmp_path, "b.yaml", budget(VALID_ENTRY.replace("Block", "Stop")))
    assert problems(tmp_path, tmp_path) == [
        "a.yaml:31: spec.modelCatalog.sources[0].configMap: "
        'ConfigMap "agentgateway-system/model-cost-catalog" is not in the configuration',
        'b.yaml:10: spec.budgets[0].onBudgetExceeded: unknown action "Stop"; expected one of: Audit, Block',
    ]


# --- never a crash ------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _load_or_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text)
        try:
            load_config([path], [path])
        except ConfigError as error:
            assert all(isinstance(p, Problem) and p.line >= 0 for p in error.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(["name", "subject", "limit", "window", "onBudgetExceeded", "extra"]),
    value=_values,
)
def test_any_value_in_any_entry_field_gives_a_config_or_config_error(field, value):
    entry = {**yaml.safe_load(VALID_ENTRY)[0], field: value}
    _load_or_config_error(
        yaml.safe_dump({**yaml.safe_load(BUDGET_HEADER + "    []"), "spec": {"budgets": [entry]}})
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{}\"'&*!|>#%@`\n \t,?\\0.~")), max_size=60))
def test_any_text_gives_a_config_or_config_error(text):
    _load_or_config_error(text)


def test_deep_nesting_and_self_referencing_aliases_are_problems_not_crashes(tmp_path):
    assert problems_in(tmp_path, "[" * 5000 + "]" * 5000)[0].startswith("b.yaml:1: (yaml): invalid YAML")
    text = budget(VALID_ENTRY).replace("  name: team\n", "  name: team\n  labels: &loop {x: *loop}\n")
    found = problems_in(tmp_path, text, "c.yaml")
    assert found[0] == "c.yaml:5: metadata.labels.x: an alias refers to the node that contains it"


def test_unreadable_values_and_characters_are_one_line_problems(tmp_path):
    assert problems_in(tmp_path, "a: \x01\n") == [
        "b.yaml:1: (yaml): invalid YAML: special characters are not allowed: character #x0001"
    ]
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: !custom x\n  labels: {since: 2024-02-30}\n"
    assert problems_in(tmp_path, text, "c.yaml") == [
        "c.yaml:4: metadata.name: cannot read value 'x': "
        "could not determine a constructor for the tag '!custom'",
        "c.yaml:5: metadata.labels.since: cannot read value '2024-02-30': day is out of range for month",
    ]


def test_budget_namespaces_label_namespaces_for_selector_discovery_without_namespace_manifests(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetNamespaces
        metadata: {name: labels}
        spec:
          namespaces:
            team-a: {budgets: enabled, tier: gold}
            team-b: {}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: team-a}
        """
    with pytest.raises(ConfigError) as err:
        load_config([write(tmp_path, "ns.yaml", text)])
    (problem,) = err.value.problems
    assert problem.line == 11
    assert problem.path == "metadata.name"
    assert 'namespace "team-a" is already labelled at' in problem.reason

    config = load_config([write(tmp_path, "ok.yaml", text.split("---")[0])])
    assert dict(config.namespace_labels["team-a"]) == {
        "budgets": "enabled",
        "tier": "gold",
        "kubernetes.io/metadata.name": "team-a",
    }
    assert dict(config.namespace_labels["team-b"]) == {"kubernetes.io/metadata.name": "team-b"}


# --- near misses of our kinds are mistakes, never silently dropped ---------------------


def test_an_unknown_kind_in_our_group_is_an_error_with_a_guess(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: Budgett
        metadata: {name: b}
        spec: {budgets: []}
        """
    assert problems_in(tmp_path, text) == [
        'b.yaml:2: kind: unknown kind "Budgett" in budgets.extproc.dev/v1alpha1 (did you mean "Budget"?); '
        "expected one of: Budget, BudgetDimensions, BudgetNamespaces, BudgetPolicy"
    ]


def test_a_miscased_report_kind_is_an_error_with_a_guess(tmp_path):
    text = """\
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentGatewayBudget
        metadata: {name: b}
        spec: {budgets: []}
        """
    (problem,) = problems_in(tmp_path, text)
    assert problem.startswith(
        'b.yaml:2: kind: unknown kind "EnterpriseAgentGatewayBudget" in '
        'enterpriseagentgateway.solo.io/v1alpha1 (did you mean "EnterpriseAgentgatewayBudget"?)'
    )


def test_a_typo_in_the_group_of_one_of_our_kinds_is_an_error(tmp_path):
    text = """\
        apiVersion: budget.extproc.dev/v1alpha1
        kind: Budget
        metadata: {name: b}
        spec: {budgets: []}
        """
    assert problems_in(tmp_path, text) == [
        "b.yaml:1: apiVersion: unsupported for Budget; expected budgets.extproc.dev/v1alpha1"
    ]


def test_other_kinds_of_the_report_groups_and_of_other_groups_are_left_alone(tmp_path):
    text = """\
        apiVersion: agentgateway.dev/v1alpha1
        kind: AgentgatewayParameters
        metadata: {name: p}
        ---
        apiVersion: enterpriseagentgateway.solo.io/v1alpha1
        kind: EnterpriseAgentgatewayBackend
        metadata: {name: p}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: g}
        ---
        apiVersion: other.example.com/v1
        kind: Budget
        metadata: {name: b}
        """
    config = load_config([write(tmp_path, "b.yaml", text)])
    assert config.budgets == () and config.policies == ()


def test_a_selector_with_no_labels_is_refused_rather_than_selecting_every_namespace(tmp_path):
    text = """\
        apiVersion: budgets.extproc.dev/v1alpha1
        kind: BudgetPolicy
        metadata: {name: p}
        spec:
          targetRefs: [{kind: HTTPRoute, name: chat}]
          discovery:
            from: Selector
            selector: {matchLabels: {}}
        """
    assert problems_in(tmp_path, text) == [
        "b.yaml:8: spec.discovery.selector.matchLabels: must name at least one label "
        "(for every namespace, use from: All)"
    ]
