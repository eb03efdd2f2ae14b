"""The CRDs are ones a real API server accepts, they admit every manifest the sidecar loads,
and they refuse what the sidecar refuses.

No kube-apiserver runs here: `k8s_schema` implements the API server's CRD checks (structural
schemas, list/map types, CEL rule well-formedness, printer columns) and its handling of a
custom resource (prune, default, OpenAPI validation, list-map keys, CEL rules evaluated with
cel-python). The checker is itself tested below on schemas it must refuse.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import ConfigError, load_config
from tests.support import field_report
from tests.unit.deploy.k8s_schema import (
    GATEWAY_POLICY_LABEL,
    ResourceValidator,
    crd_problems,
    offline_schema_problems,
    resolve_json_path,
    structural_problems,
)

ROOT = Path(__file__).resolve().parents[3]
CRD_FILES = sorted((ROOT / "deploy" / "crds").glob("*.yaml"))
CRDS = [doc for path in CRD_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]
OURS = "budgets.extproc.dev/v1alpha1"
SOLO = "enterpriseagentgateway.solo.io/v1alpha1"
VALIDATORS = {(v.api_version, v.kind): v for v in map(ResourceValidator, CRDS)}
# shared/ sits beside the checkout (the workspace, and CI's fresh clone).
REPORT = next(
    (
        folder / "reference" / "budgets-field-report.txt"
        for folder in (ROOT.parent / "shared", ROOT / "shared")
        if (folder / "reference" / "budgets-field-report.txt").exists()
    ),
    ROOT.parent / "shared" / "reference" / "budgets-field-report.txt",
)


def crd(kind: str) -> dict[str, Any]:
    (found,) = [c for c in CRDS if c["spec"]["names"]["kind"] == kind]
    return found


def schema(kind: str) -> dict[str, Any]:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validator(kind: str) -> ResourceValidator:
    (found,) = [v for v in VALIDATORS.values() if v.kind == kind]
    return found


# --- the CRDs themselves ------------------------------------------------------------


def test_there_is_a_crd_for_each_of_our_kinds_and_the_reports() -> None:
    by_file = {
        path.name: {d["spec"]["names"]["kind"] for d in yaml.safe_load_all(path.read_text()) if d}
        for path in CRD_FILES
    }
    assert by_file == {
        "budgets.extproc.dev.yaml": {"Budget", "BudgetPolicy", "BudgetDimensions", "BudgetNamespaces"},
        "enterpriseagentgateway.solo.io.yaml": {
            "EnterpriseAgentgatewayBudget",
            "EnterpriseAgentgatewayPolicy",
            "EnterpriseAgentgatewayParameters",
        },
    }
    header = (ROOT / "deploy" / "crds" / "enterpriseagentgateway.solo.io.yaml").read_text()[:600]
    assert "only where Solo's own CRDs are NOT installed" in header


@pytest.mark.parametrize("definition", CRDS, ids=lambda c: c["metadata"]["name"])
def test_the_api_server_would_accept_the_crd(definition: dict[str, Any]) -> None:
    assert crd_problems(definition) == []


@pytest.mark.parametrize("definition", CRDS, ids=lambda c: c["metadata"]["name"])
def test_the_crd_document_is_a_valid_apiextensions_v1_object(definition: dict[str, Any]) -> None:
    # The offline OpenAPI of apiextensions.k8s.io/v1, strict: an unknown key anywhere
    # (a misspelt `x-kubernetes-*` extension, say) fails here.
    assert offline_schema_problems(definition) == []


def test_the_offline_crd_check_refuses_a_misspelt_extension() -> None:
    """The check above can fail: one misspelt key in a schema is reported."""
    broken = copy.deepcopy(CRDS[0])
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-field"] = True
    assert offline_schema_problems(broken) != []


def test_the_reports_budget_kind_has_exactly_our_budget_schema_and_columns() -> None:
    ours, theirs = crd("Budget"), crd("EnterpriseAgentgatewayBudget")
    assert schema("Budget")["properties"] == schema("EnterpriseAgentgatewayBudget")["properties"]
    columns = [
        [(c["name"], c["type"], c["jsonPath"]) for c in d["spec"]["versions"][0]["additionalPrinterColumns"]]
        for d in (ours, theirs)
    ]
    assert columns[0] == columns[1]


def test_both_policy_kinds_share_status_discovery_and_route_settings() -> None:
    ours, theirs = schema("BudgetPolicy")["properties"], schema("EnterpriseAgentgatewayPolicy")["properties"]
    assert ours["status"] == theirs["status"]
    enforcement = theirs["spec"]["properties"]["traffic"]["properties"]["entBudgetEnforcement"]["properties"]
    own = ours["spec"]["properties"]
    assert enforcement["discovery"]["properties"] == {
        "namespaces": own["discovery"]["properties"]["namespaces"]
    }
    for name in ("failureMode", "provider", "api", "estimateUsage"):
        assert enforcement[name] == own[name]


@pytest.mark.parametrize("kind", ["BudgetPolicy", "EnterpriseAgentgatewayPolicy"])
def test_policy_crds_are_gateway_api_direct_policies_with_ancestor_status(kind: str) -> None:
    definition = crd(kind)
    assert definition["metadata"]["labels"][GATEWAY_POLICY_LABEL] == "Direct"
    version = definition["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"].upper(), c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("ACCEPTED", "string", '.status.ancestors[0].conditions[?(@.type=="Accepted")].status'),
        ("ATTACHED", "string", '.status.ancestors[0].conditions[?(@.type=="Attached")].status'),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]  # the field report's `NAME ACCEPTED ATTACHED AGE`
    ancestor = schema(kind)["properties"]["status"]["properties"]["ancestors"]["items"]
    assert set(ancestor["properties"]) == {"ancestorRef", "controllerName", "conditions"}
    assert set(ancestor["properties"]["ancestorRef"]["properties"]) >= {
        "group",
        "kind",
        "name",
        "namespace",
        "sectionName",
    }
    _assert_conditions(ancestor["properties"]["conditions"])


@pytest.mark.parametrize("kind", ["Budget", "EnterpriseAgentgatewayBudget"])
def test_budget_crds_show_accepted_and_enforced_conditions(kind: str) -> None:
    version = crd(kind)["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"].upper(), c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("ACCEPTED", "string", '.status.conditions[?(@.type=="Accepted")].status'),
        ("ENFORCED", "string", '.status.conditions[?(@.type=="Enforced")].status'),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]
    _assert_conditions(schema(kind)["properties"]["status"]["properties"]["conditions"])
    budgets = schema(kind)["properties"]["spec"]["properties"]["budgets"]
    assert budgets["x-kubernetes-list-type"] == "map"
    assert budgets["x-kubernetes-list-map-keys"] == ["name"]


def _assert_conditions(conditions: dict[str, Any]) -> None:
    """metav1.Condition, as a list-map keyed by type."""
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}


def test_names_categories_and_short_names_do_not_collide() -> None:
    # kubectl expands a category *before* it looks up a resource, so a category named like a
    # resource (`budgets`) would change what `kubectl get budgets` lists.
    resource_names: set[str] = set()
    short_names: list[str] = []
    for definition in CRDS:
        names = definition["spec"]["names"]
        resource_names |= {names["plural"], names["singular"], names["kind"].lower()}
        short_names += names.get("shortNames", [])
    categories = {c for d in CRDS for c in d["spec"]["names"].get("categories", [])}
    assert categories == {"llm-budgets"}
    assert not categories & (resource_names | set(short_names))
    assert len(short_names) == len(set(short_names))
    assert not set(short_names) & resource_names


# --- the checker refuses what the API server refuses ---------------------------------

_GOOD = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "maxItems": 4,
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string", "maxLength": 8}},
                    },
                },
                "labels": {
                    "type": "object",
                    "maxProperties": 4,
                    "additionalProperties": {"type": "string", "maxLength": 8},
                },
            },
        },
    },
}


def _bad(path: str, value: Any) -> dict[str, Any]:
    schema_ = copy.deepcopy(_GOOD)
    *parents, last = path.split("/")
    node = schema_
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return schema_


_DELETE = object()
_SPEC = "properties/spec"
_ITEM = f"{_SPEC}/properties/items/items"


@pytest.mark.parametrize(
    ("schema_", "expected"),
    [
        # What today's API server says about the old CRDs' 12 closed objects:
        (
            _bad(f"{_SPEC}/additionalProperties", False),
            "additionalProperties and properties are mutual exclusive",
        ),
        (_bad(f"{_SPEC}/additionalProperties", {"type": "string"}), "mutual exclusive"),
        (
            _bad(f"{_SPEC}/properties/labels/additionalProperties/type", _DELETE),
            "must not be empty for specified object fields",
        ),
        (_bad(f"{_ITEM}/type", _DELETE), "must not be empty for specified array items"),
        (_bad("type", _DELETE), "must not be empty at the root"),
        (_bad(f"{_SPEC}/properties/ref", {"$ref": "#/definitions/x"}), "$ref is not supported"),
        (_bad(f"{_SPEC}/definitions", {"x": {"type": "string"}}), "definitions is not supported"),
        (_bad(f"{_SPEC}/dependencies", {"a": ["b"]}), "dependencies is not supported"),
        (_bad(f"{_SPEC}/properties/items/additionalItems", False), "additionalItems is not supported"),
        (
            _bad(f"{_SPEC}/patternProperties", {"^a": {"type": "string"}}),
            "patternProperties is not supported",
        ),
        (
            _bad(f"{_SPEC}/properties/items/uniqueItems", True),
            "cannot be set to true since the runtime complexity",
        ),
        (_bad(f"{_SPEC}/x-kubernetes-preserve-unknown-fields", False), "must be true or undefined"),
        (
            _bad("properties/metadata/description", "x"),
            "must not specify anything other than name and generateName",
        ),
        (_bad("properties/metadata/properties", {"labels": {"type": "object"}}), "name and generateName"),
        (_bad("properties/kind/type", "integer"), "must be string"),
        (_bad("additionalProperties", {"type": "string"}), "must not be used at the root"),
        (_bad(f"{_ITEM}/required", []), "must have a default or be required"),
        (_bad(f"{_ITEM}/properties/name", {"type": "object"}), "must be a scalar type"),
        (_bad(f"{_SPEC}/properties/items/x-kubernetes-list-map-keys", ["nom"]), "entries must all be names"),
        (
            _bad(f"{_SPEC}/properties/items/x-kubernetes-list-type", _DELETE),
            "must be map if x-kubernetes-list-map-keys",
        ),
        (_bad(f"{_SPEC}/properties/items/x-kubernetes-list-type", "bag"), "unsupported 'bag'"),
        (
            _bad(f"{_SPEC}/properties/labels/x-kubernetes-list-type", "atomic"),
            "must be array if x-kubernetes-list-type",
        ),
        (_bad(f"{_SPEC}/properties/items/items", _DELETE), "items: must be specified"),
        (_bad(f"{_SPEC}/properties/items/items", [{"type": "string"}]), "items must be a schema object"),
        (_bad(f"{_SPEC}/anyOf", [{"type": "object"}]), "must be empty to be structural"),
        (
            _bad(f"{_SPEC}/anyOf", [{"required": ["other"], "properties": {"other": {}}}]),
            "must be specified in the structural schema",
        ),
        (
            _bad(f"{_SPEC}/oneOf", [{"x-kubernetes-validations": [{"rule": "true"}]}]),
            "must be undefined to be structural",
        ),
        (_bad(f"{_SPEC}/properties/items/maxItems", _DELETE), "an array needs maxItems"),
        (_bad(f"{_SPEC}/properties/labels/maxProperties", _DELETE), "a map needs maxProperties"),
        (_bad(f"{_ITEM}/properties/name/maxLength", _DELETE), "a string needs maxLength"),
        (
            _bad(f"{_SPEC}/properties/labels/additionalProperties/pattern", "(unclosed"),
            "must be a valid regular expression",
        ),
        (
            _bad(f"{_SPEC}/properties/labels/additionalProperties/pattern", "^(?=a)"),
            "must be a valid regular expression",
        ),
        (
            _bad(f"{_SPEC}/x-kubernetes-validations", [{"rule": "self.itemz.size() > 0"}]),
            "undefined field 'itemz'",
        ),
        (
            _bad(f"{_SPEC}/x-kubernetes-validations", [{"rule": "self.items.all(i, i.nom != '')"}]),
            "undefined field 'nom'",
        ),
        (
            _bad(f"{_SPEC}/x-kubernetes-validations", [{"rule": "has(self.items) &&\nsize(self.items) > 0"}]),
            "message must be specified if rule contains line breaks",
        ),
        (
            _bad(f"{_SPEC}/x-kubernetes-validations", [{"rule": "true", "fieldPath": ".nope"}]),
            "fieldPath must be a valid path",
        ),
        (
            _bad(f"{_SPEC}/x-kubernetes-validations", [{"rule": "true", "reason": "Because"}]),
            "unsupported 'Because'",
        ),
        (_bad(f"{_SPEC}/x-kubernetes-validations", [{"rule": "self.items.("}]), "does not compile"),
        (
            _bad(
                f"{_SPEC}/properties/n",
                {
                    "x-kubernetes-int-or-string": True,
                    "x-kubernetes-preserve-unknown-fields": True,
                    "maxLength": 3,
                },
            ),
            "must be false if x-kubernetes-int-or-string",
        ),
        (_bad(f"{_SPEC}/properties/items/items/default", "x"), "is not of type 'object'"),
    ],
)
def test_the_structural_checker_refuses_what_the_api_server_refuses(
    schema_: dict[str, Any], expected: str
) -> None:
    assert crd_problems(_crd_with(_GOOD)) == []
    problems = crd_problems(_crd_with(schema_))
    assert any(expected in p for p in problems), problems


def _crd_with(openapi: dict[str, Any], **version: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Thing", "listKind": "ThingList", "plural": "things", "singular": "thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi},
                    **version,
                }
            ],
        },
    }


def test_the_checker_refuses_bad_printer_columns_and_a_status_without_its_subresource() -> None:
    with_status = copy.deepcopy(_GOOD)
    with_status["properties"]["status"] = {
        "type": "object",
        "properties": {"phase": {"type": "string", "enum": ["A"]}},
    }
    assert any("go together" in p for p in crd_problems(_crd_with(with_status)))
    assert crd_problems(_crd_with(with_status, subresources={"status": {}})) == []
    columns = [{"name": "Name", "type": "string", "jsonPath": ".spec.itemz[0].name"}]
    assert any(
        "no field 'itemz'" in p for p in crd_problems(_crd_with(_GOOD, additionalPrinterColumns=columns))
    )
    columns = [{"name": "When", "type": "date", "jsonPath": ".spec.items[0].name"}]
    assert any("date-time" in p for p in crd_problems(_crd_with(_GOOD, additionalPrinterColumns=columns)))
    columns = [{"name": "X", "type": "text", "jsonPath": "spec"}]
    problems = crd_problems(_crd_with(_GOOD, additionalPrinterColumns=columns))
    assert any("must be one of" in p for p in problems) and any("starting with ." in p for p in problems)
    # A status subresource narrows what the root may hold.
    assert structural_problems({**_GOOD, "minProperties": 1}, status_subresource=True)
    assert structural_problems(_GOOD, status_subresource=True) == []


def test_printer_column_paths_resolve_into_the_schema() -> None:
    node, problem = resolve_json_path(
        schema("BudgetPolicy"), '.status.ancestors[0].conditions[?(@.type=="X")].status'
    )
    assert problem is None and node["enum"] == ["True", "False", "Unknown"]
    assert resolve_json_path(schema("Budget"), '.status.conditions[?(@.kind=="X")].status')[1]


# --- documents the API server admits -------------------------------------------------


def _report_file_documents() -> list[dict[str, Any]]:
    """The field report's manifests read from the report itself: each paragraph that is YAML.
    Its team split is a bare `spec:` fragment, wrapped into the kind it belongs to."""
    docs: list[dict[str, Any]] = []
    if not REPORT.exists():
        return docs
    for paragraph in re.split(r"\n\s*\n", REPORT.read_text()):
        text = paragraph.strip("\n")
        if text.startswith("spec:"):
            fragment = yaml.safe_load(text)
            meta = {"name": "team-split", "namespace": "agentgateway-system"}
            docs.append(
                {"apiVersion": SOLO, "kind": "EnterpriseAgentgatewayBudget", "metadata": meta, **fragment}
            )
        elif text.startswith("apiVersion:"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every manifest of ours or the report's kinds that this repository ships or quotes."""
    found: list[tuple[str, dict[str, Any]]] = []
    paths = [
        *sorted((ROOT / "examples").glob("*.yaml")),
        ROOT / "bench" / "budgets.yaml",
        *sorted((ROOT / "deploy" / "kind").glob("*.yaml")),
    ]
    for path in paths:
        found += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    found += [("field-report", d) for d in field_report.documents()]
    return [(where, d) for where, d in found if (d.get("apiVersion"), d.get("kind")) in VALIDATORS]


def test_the_field_reports_manifests_are_all_found() -> None:
    kinds = sorted(d["kind"] for where, d in manifests() if where == "field-report")
    assert kinds == [
        "EnterpriseAgentgatewayBudget",
        "EnterpriseAgentgatewayBudget",
        "EnterpriseAgentgatewayParameters",
        "EnterpriseAgentgatewayPolicy",
    ]


def test_the_copy_of_the_field_reports_manifests_is_verbatim() -> None:
    """tests/support/field_report.py stands in for the report, which sits outside the repository."""
    if not REPORT.exists():
        pytest.skip("the field report is not beside this checkout (the copy is checked where it is)")
    ours = field_report.documents()
    theirs = _report_file_documents()
    for doc in theirs:
        if doc["metadata"].get("name") == "team-split":  # the bare `spec:`: our copy names it
            doc["metadata"]["name"] = "team-budgets"
    for doc in [*ours, *theirs]:  # a catalog's text is compared as the JSON it holds
        if doc["kind"] == "ConfigMap":
            doc["data"] = {k: json.loads(v) for k, v in doc["data"].items()}
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(theirs, key=key) == sorted(ours, key=key)


@pytest.mark.parametrize(
    "manifest", manifests(), ids=lambda m: f"{m[0]}:{m[1]['kind']}/{m[1]['metadata']['name']}"
)
def test_every_manifest_is_admitted_by_its_crd(manifest: tuple[str, dict[str, Any]]) -> None:
    _, doc = manifest
    assert VALIDATORS[(doc["apiVersion"], doc["kind"])].problems(doc) == []


def _policy(spec: dict[str, Any], kind: str = "BudgetPolicy") -> dict[str, Any]:
    if kind == "BudgetPolicy":
        full = {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
            **spec,
        }
        return {
            "apiVersion": OURS,
            "kind": kind,
            "metadata": {"name": "p", "namespace": "team-a"},
            "spec": full,
        }
    body = {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}]}
    body["traffic"] = {"entBudgetEnforcement": spec}
    return {"apiVersion": SOLO, "kind": kind, "metadata": {"name": "p", "namespace": "team-a"}, "spec": body}


_SELECTOR = {"matchLabels": {"budgets": "on"}}
# Both discovery shapes: today's flat one and the field report's `namespaces` one.
DISCOVERY_ACCEPTED = [
    ("none", {}, True),
    ("flat-same", {"discovery": {"from": "Same"}}, True),
    ("flat-all", {"discovery": {"from": "All"}}, True),
    ("flat-selector", {"discovery": {"from": "Selector", "selector": _SELECTOR}}, True),
    ("flat-empty", {"discovery": {}}, True),
    ("nested-same", {"discovery": {"namespaces": {"from": "Same"}}}, False),
    ("nested-all", {"discovery": {"namespaces": {"from": "All"}}}, False),
    ("nested-selector", {"discovery": {"namespaces": {"from": "Selector", "selector": _SELECTOR}}}, False),
]


@pytest.mark.parametrize(
    ("spec", "loader_reads_it"), [c[1:] for c in DISCOVERY_ACCEPTED], ids=[c[0] for c in DISCOVERY_ACCEPTED]
)
def test_budget_policy_admits_both_discovery_shapes(
    tmp_path: Path, spec: dict[str, Any], loader_reads_it: bool
) -> None:
    doc = _policy(spec)
    assert validator("BudgetPolicy").problems(doc) == []
    if loader_reads_it:  # the loader's support for the nested shape is being added alongside
        _load(tmp_path, [doc])


@pytest.mark.parametrize(
    "namespaces", [{"from": "Same"}, {"from": "All"}, {"from": "Selector", "selector": _SELECTOR}]
)
def test_the_reports_policy_admits_its_discovery_shapes(tmp_path: Path, namespaces: dict[str, Any]) -> None:
    doc = _policy({"discovery": {"namespaces": namespaces}}, "EnterpriseAgentgatewayPolicy")
    assert validator("EnterpriseAgentgatewayPolicy").problems(doc) == []
    _load(tmp_path, [doc])


def test_unknown_fields_are_refused_under_strict_validation_and_pruned_otherwise() -> None:
    doc = _budget({"note": "mine"})
    assert validator("Budget").problems(doc) == ["spec.budgets[0].note: unknown field"]
    assert validator("Budget").problems(doc, strict=False) == []
    assert "note" not in validator("Budget").admitted(doc)["spec"]["budgets"][0]
    # A misspelt required field is refused either way: pruned, the real one is missing.
    assert validator("Budget").problems(_typo(), strict=False) == [
        "spec.budgets[0]: 'onBudgetExceeded' is a required property"
    ]


def test_the_reports_kinds_keep_the_fields_that_are_not_about_budgets() -> None:
    policy = _policy({"discovery": {"namespaces": {"from": "Same"}}}, "EnterpriseAgentgatewayPolicy")
    policy["spec"]["traffic"]["rateLimit"] = {"local": [{"requests": 10}]}
    policy["spec"]["backend"] = {"timeout": "10s"}
    stored = validator("EnterpriseAgentgatewayPolicy").admitted(policy)
    assert stored["spec"]["traffic"]["rateLimit"] == {"local": [{"requests": 10}]}
    assert stored["spec"]["backend"] == {"timeout": "10s"}
    # ...while the part we own is pruned like any of our kinds.
    policy["spec"]["traffic"]["entBudgetEnforcement"]["discovery"]["namespace"] = {"from": "All"}
    assert validator("EnterpriseAgentgatewayPolicy").problems(policy) == [
        "spec.traffic.entBudgetEnforcement.discovery.namespace: unknown field"
    ]
    # A policy that is not about budgets may target anything, as Solo's other policies do.
    other = {
        "apiVersion": SOLO,
        "kind": "EnterpriseAgentgatewayPolicy",
        "metadata": {"name": "other"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "s", "sectionName": "http"}],
            "traffic": {"x": 1},
        },
    }
    assert validator("EnterpriseAgentgatewayPolicy").problems(other) == []
    parameters = {
        "apiVersion": SOLO,
        "kind": "EnterpriseAgentgatewayParameters",
        "metadata": {"name": "p"},
        "spec": {
            "deployment": {"replicas": 2},
            "modelCatalog": {"sources": [{"configMap": {"name": "c", "key": "k"}}]},
        },
    }
    assert validator("EnterpriseAgentgatewayParameters").admitted(parameters)["spec"]["deployment"] == {
        "replicas": 2
    }


# --- the CRDs refuse what the loader refuses ------------------------------------------


def _budget(
    entry: dict[str, Any], kind: str = "Budget", extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    base = {
        "name": "ok",
        "limit": {"unit": "USD", "amount": 5},
        "window": {"unit": "Day"},
        "onBudgetExceeded": "Block",
    }
    version = OURS if kind == "Budget" else SOLO
    return {
        "apiVersion": version,
        "kind": kind,
        "metadata": {"name": "b", "namespace": "team-a"},
        "spec": {"budgets": [{**base, **entry}, *(extra or [])]},
    }


def _typo() -> dict[str, Any]:
    doc = _budget({"onBudgetExeeded": "Block"})
    del doc["spec"]["budgets"][0]["onBudgetExceeded"]
    return doc


def _dimensions(dimensions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": OURS,
        "kind": "BudgetDimensions",
        "metadata": {"name": "d"},
        "spec": {"dimensions": dimensions},
    }


def _load(tmp_path: Path, docs: list[dict[str, Any]]) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    load_config([path])


def _tokens(amount: Any) -> dict[str, Any]:
    return {"limit": {"unit": "Tokens", "amount": amount}}


def _usd(amount: Any) -> dict[str, Any]:
    return {"limit": {"unit": "USD", "amount": amount}}


_CATALOG = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "c", "namespace": "team-a"},
    "data": {"k": '{"providers": {"openai": {"models": {"m": {"rates": {"input": "1", "output": "2"}}}}}}'},
}


def _parameters(catalog: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "p", "namespace": "team-a"}
    return {
        "apiVersion": SOLO,
        "kind": "EnterpriseAgentgatewayParameters",
        "metadata": meta,
        "spec": {"modelCatalog": catalog},
    }


_TARGET = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}

# (id, document, what the API server says, whether the loader refuses it too). False marks
# where the CRD is stricter than the loader, on purpose (noted in deploy/README.md).
REFUSED: list[tuple[str, dict[str, Any], str, bool]] = [
    ("tokens-over-2^32-1", _budget(_tokens(4294967296)), "at most 4294967295 (2^32-1)", True),
    ("tokens-as-string", _budget(_tokens("2000")), "an integer (not a string)", False),
    ("tokens-zero", _budget(_tokens(0)), "less than the minimum of 1", True),
    ("usd-10-decimals", _budget(_usd("0.1234567891")), "does not match", True),
    ("usd-float", _budget(_usd(0.5)), "is not of type 'integer', 'string'", False),
    ("usd-zero-string", _budget(_usd("0.000")), "amount must be positive", True),
    ("usd-negative", _budget(_usd("-1")), "does not match", True),
    ("usd-words", _budget(_usd("five")), "does not match", True),
    ("usd-over-max-string", _budget(_usd("9223372037")), "a USD limit is at most", True),
    ("usd-over-max-int", _budget(_usd(9223372037)), "greater than the maximum", True),
    ("unit", _budget({"limit": {"unit": "Euros", "amount": 5}}), "is not one of ['USD', 'Tokens']", True),
    ("name-case", _budget({"name": "Bad_Name"}), "does not match", True),
    ("name-64", _budget({"name": "a" * 64}), "is too long", False),
    ("subject-key-bar", _budget({"subject": {"a|b": "x"}}), "subject keys must not be empty", True),
    ("subject-key-empty", _budget({"subject": {"": "x"}}), "subject keys must not be empty", True),
    ("subject-value-caret", _budget({"subject": {"k": "a^b"}}), "does not match", True),
    ("subject-value-empty", _budget({"subject": {"k": ""}}), "should be non-empty", True),
    ("subject-17-keys", _budget({"subject": {f"k{i}": "v" for i in range(17)}}), "too many properties", True),
    ("window", _budget({"window": {"unit": "Fortnight"}}), "is not one of", True),
    ("action", _budget({"onBudgetExceeded": "Warn"}), "is not one of", True),
    ("action-typo", _typo(), "onBudgetExeeded: unknown field", True),
    ("duplicate-entry", _budget({}, extra=[{**_budget({})["spec"]["budgets"][0]}]), "Duplicate value", True),
    (
        "report-kind-tokens",
        _budget(_tokens(2**40), "EnterpriseAgentgatewayBudget"),
        "at most 4294967295",
        True,
    ),
    # discovery, both shapes
    (
        "selector-without-Selector",
        _policy({"discovery": {"from": "Same", "selector": _SELECTOR}}),
        "selector is required when from is Selector",
        True,
    ),
    (
        "Selector-without-selector",
        _policy({"discovery": {"from": "Selector"}}),
        "selector is required when from is Selector",
        True,
    ),
    (
        "nested-selector-without-Selector",
        _policy({"discovery": {"namespaces": {"from": "All", "selector": _SELECTOR}}}),
        "selector is required when from is Selector",
        True,
    ),
    (
        "nested-Selector-without-selector",
        _policy({"discovery": {"namespaces": {"from": "Selector"}}}),
        "selector is required when from is Selector",
        True,
    ),
    (
        "both-shapes",
        _policy({"discovery": {"from": "Same", "namespaces": {"from": "Same"}}}),
        "not both",
        True,
    ),
    (
        "matchExpressions",
        _policy(
            {
                "discovery": {
                    "from": "Selector",
                    "selector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                }
            }
        ),
        "matchExpressions is not supported",
        True,
    ),
    (
        "empty-selector",
        _policy({"discovery": {"from": "Selector", "selector": {}}}),
        "selector needs matchLabels",
        False,
    ),
    (
        "empty-matchLabels",
        _policy({"discovery": {"from": "Selector", "selector": {"matchLabels": {}}}}),
        "should be non-empty",
        False,
    ),
    ("discovery-mode", _policy({"discovery": {"from": "Everywhere"}}), "is not one of", True),
    (
        "report-Selector-without-selector",
        _policy({"discovery": {"namespaces": {"from": "Selector"}}}, "EnterpriseAgentgatewayPolicy"),
        "selector is required when from is Selector",
        True,
    ),
    (
        "report-flat-discovery",
        _policy({"discovery": {"from": "Same"}}, "EnterpriseAgentgatewayPolicy"),
        "discovery.from: unknown field",
        True,
    ),
    # targetRefs
    ("no-targets", _policy({"targetRefs": []}), "should be non-empty", True),
    (
        "17-targets",
        _policy({"targetRefs": [{**_TARGET, "name": f"r{i}"} for i in range(17)]}),
        "is too long",
        False,
    ),
    (
        "target-kind",
        _policy({"targetRefs": [{"kind": "Service", "name": "s"}]}),
        "is not one of ['HTTPRoute', 'Gateway']",
        True,
    ),
    ("target-group", _policy({"targetRefs": [{**_TARGET, "group": "example.com"}]}), "is not one of", True),
    (
        "target-section",
        _policy({"targetRefs": [{**_TARGET, "sectionName": "http"}]}),
        "sectionName is not supported",
        True,
    ),
    (
        "duplicate-target",
        _policy({"targetRefs": [_TARGET, {"kind": "HTTPRoute", "name": "r"}]}),
        "Duplicate value",
        False,
    ),
    (
        "report-target-kind",
        _policy({}, "EnterpriseAgentgatewayPolicy")
        | {
            "spec": {
                "targetRefs": [{"kind": "Service", "name": "s"}],
                "traffic": {"entBudgetEnforcement": {}},
            }
        },
        "budget enforcement targets whole HTTPRoutes",
        True,
    ),
    (
        "report-no-targets",
        _policy({}, "EnterpriseAgentgatewayPolicy") | {"spec": {"traffic": {"entBudgetEnforcement": {}}}},
        "needs at least one targetRef",
        True,
    ),
    ("failure-mode", _policy({"failureMode": "Sometimes"}), "is not one of", True),
    ("api", _policy({"api": "openai.chatty"}), "is not one of", True),
    ("provider", _policy({"provider": "open|ai"}), "does not match", True),
    ("estimate-usage", _policy({"estimateUsage": "yes"}), "is not of type 'boolean'", True),
    ("policy-typo", _policy({"failuremode": "Open"}), "spec.failuremode: unknown field", True),
    # dimensions
    (
        "two-sources",
        _dimensions({"group": {"header": "x-team", "attribute": "a"}}),
        "set exactly one of",
        True,
    ),
    ("no-source", _dimensions({"group": {}}), "set exactly one of", True),
    ("split-api-key", _dimensions({"key": {"apiKey": {}, "split": ","}}), "cannot be split", True),
    ("built-in", _dimensions({"model": {"header": "x-model"}}), "built in", True),
    ("dimension-key", _dimensions({"a|b": {"header": "x"}}), "dimension keys must not be empty", True),
    ("header-name", _dimensions({"group": {"header": "x team"}}), "does not match", True),
    ("api-key-header", _dimensions({"key": {"apiKey": {"header": "x-token"}}}), "does not match", True),
    (
        "metadata-path",
        _dimensions({"user": {"metadata": {"namespace": "envoy.filters.http.jwt_authn"}}}),
        "'path' is a required property",
        True,
    ),
    ("body-empty", _dimensions({"user": {"body": []}}), "should be non-empty", True),
    # catalog sources
    ("no-sources", _parameters({}), "'sources' is a required property", True),
    (
        "no-key",
        _parameters({"sources": [{"configMap": {"name": "c"}}]}),
        "'key' is a required property",
        True,
    ),
    ("source-kind", _parameters({"sources": [{"file": "/x"}]}), "sources[0].file: unknown field", True),
]


@pytest.mark.parametrize(
    ("doc", "expected", "loader_refuses"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_the_crd_refuses_what_the_loader_refuses(
    tmp_path: Path, doc: dict[str, Any], expected: str, loader_refuses: bool
) -> None:
    problems = VALIDATORS[(doc["apiVersion"], doc["kind"])].problems(doc)
    assert any(expected in p for p in problems), problems
    if loader_refuses:
        extra = [_CATALOG] if doc["kind"] == "EnterpriseAgentgatewayParameters" else []
        with pytest.raises(ConfigError, match=r"doc\.yaml:\d+: "):
            _load(tmp_path, [*extra, doc])


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("tokens-2^32-1", _budget(_tokens(4294967295))),
    ("usd-string", _budget(_usd("0.50"))),
    ("usd-9-decimals", _budget(_usd("0.123456789"))),
    ("usd-trailing-zeros", _budget(_usd("0.1234567890"))),
    ("usd-max", _budget(_usd("9223372036.854775807"))),
    ("usd-integer", _budget(_usd(1))),
    ("subject-star", _budget({"subject": {"user": "*", "team": "eng"}})),
    ("subject-16-keys", _budget({"subject": {f"k{i}": "v" for i in range(16)}})),
    ("report-kind", _budget(_tokens(2000), "EnterpriseAgentgatewayBudget")),
    ("target-defaults-group", _policy({"targetRefs": [{"kind": "Gateway", "name": "g"}]})),
    ("target-namespace", _policy({"targetRefs": [{**_TARGET, "namespace": "team-a"}]})),
    (
        "route-settings",
        _policy({"failureMode": "Closed", "provider": "openai", "api": "openai.chat", "estimateUsage": True}),
    ),
    (
        "report-route-settings",
        _policy(
            {"failureMode": "Closed", "provider": "openai", "api": "anthropic.messages"},
            "EnterpriseAgentgatewayPolicy",
        ),
    ),
    ("api-key-default", _dimensions({"key": {"apiKey": {}}})),
    ("api-key-header-case", _dimensions({"key": {"apiKey": {"header": "X-Api-Key"}}})),
    ("header-split", _dimensions({"groups": {"header": "x-groups", "split": ","}})),
    (
        "metadata",
        _dimensions(
            {
                "user": {
                    "metadata": {"namespace": "envoy.filters.http.jwt_authn", "path": ["jwt_payload", "sub"]}
                }
            }
        ),
    ),
    ("body", _dimensions({"tenant": {"body": ["metadata", "tenant"]}})),
    ("attribute", _dimensions({"client": {"attribute": "source.address"}})),
    (
        "catalog-namespace",
        _parameters({"sources": [{"configMap": {"name": "c", "key": "k", "namespace": "team-a"}}]}),
    ),
]


@pytest.mark.parametrize("doc", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_the_crd_admits_what_the_loader_admits(tmp_path: Path, doc: dict[str, Any]) -> None:
    assert VALIDATORS[(doc["apiVersion"], doc["kind"])].problems(doc) == []
    extra = [_CATALOG] if doc["kind"] == "EnterpriseAgentgatewayParameters" else []
    _load(tmp_path, [*extra, doc])


def test_every_cel_rule_is_evaluated_both_ways() -> None:
    """Each rule in the CRDs holds for an admitted document and fails for a refused one,
    so that none is dead (or, in cel-python, silently erroring)."""
    rules = {}
    for definition in CRDS:
        for where, node in _nodes(definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            for rule in node.get("x-kubernetes-validations") or []:
                rules.setdefault(rule["message"], (rule["rule"], where))
    refused = "\n".join(
        p for _, doc, _, _ in REFUSED for p in VALIDATORS[(doc["apiVersion"], doc["kind"])].problems(doc)
    )
    missing = [message for message in rules if message not in refused]
    assert missing == []
    for _, doc in ACCEPTED + [("m", d) for _, d in manifests()]:
        problems = VALIDATORS[(doc["apiVersion"], doc["kind"])].problems(doc)
        assert not any("evaluation error" in p for p in problems)


def _nodes(s: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(where, s)]
    for name, child in (s.get("properties") or {}).items():
        found += _nodes(child, f"{where}.{name}")
    if isinstance(s.get("additionalProperties"), dict):
        found += _nodes(s["additionalProperties"], f"{where}.*")
    if isinstance(s.get("items"), dict):
        found += _nodes(s["items"], f"{where}[]")
    return found


def _condition(kind: str, status: str, reason: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": "m",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-12-01T10:00:00Z",
    }


@pytest.mark.parametrize("kind", ["Budget", "EnterpriseAgentgatewayBudget"])
def test_budget_status_as_the_sidecar_writes_it_is_valid(kind: str) -> None:
    doc = _budget(_tokens(2000), kind)
    doc["status"] = {
        "conditions": [
            _condition("Accepted", "True", "Accepted"),
            _condition("Enforced", "False", "NotDiscovered"),
        ]
    }
    assert validator(kind).problems(doc) == []
    doc["status"]["conditions"].append(_condition("Accepted", "False", "Invalid"))
    assert any("Duplicate value" in p for p in validator(kind).problems(doc))
    doc["status"]["conditions"] = [_condition("Accepted", "Maybe", "not a reason")]
    assert len(validator(kind).problems(doc)) == 2


@pytest.mark.parametrize("kind", ["BudgetPolicy", "EnterpriseAgentgatewayPolicy"])
def test_policy_status_as_the_sidecar_writes_it_is_valid(kind: str) -> None:
    doc = _policy({}, kind)
    ours = {
        "ancestorRef": {
            "group": "gateway.networking.k8s.io",
            "kind": "HTTPRoute",
            "name": "r",
            "namespace": "team-a",
        },
        "controllerName": "budgets.extproc.dev/sidecar",
        "conditions": [
            _condition("Accepted", "False", "TargetNotFound"),
            _condition("Attached", "False", "TargetNotFound"),
        ],
    }
    solo = {**ours, "controllerName": "solo.io/enterprise-agentgateway", "ancestorRef": {"name": "gw"}}
    doc["status"] = {"ancestors": [ours, solo]}
    assert validator(kind).problems(doc) == []
    # Gateway API's own bounds: 16 ancestors, 8 conditions, a domain-prefixed controller.
    doc["status"] = {"ancestors": [ours] * 17}
    assert any("is too long" in p for p in validator(kind).problems(doc))
    doc["status"] = {"ancestors": [{**ours, "controllerName": "sidecar"}]}
    assert any("does not match" in p for p in validator(kind).problems(doc))
