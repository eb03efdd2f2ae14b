"""The CRDs for our kinds accept what the sidecar accepts, and refuse what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

from extproc.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
CRDS = list(yaml.safe_load_all((ROOT / "deploy" / "crds" / "budgets.extproc.dev.yaml").read_text()))
GROUP = "budgets.extproc.dev/v1alpha1"


def validator(kind: str) -> Draft4Validator:
    (crd,) = [c for c in CRDS if c["spec"]["names"]["kind"] == kind]
    # OpenAPI v3.0 as Kubernetes takes it: draft 4 semantics (boolean exclusiveMinimum).
    return Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def our_documents() -> list[dict[str, Any]]:
    docs = []
    for path in [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "bench" / "budgets.yaml"]:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("apiVersion") == GROUP]
    return docs


def test_there_is_a_crd_for_each_of_our_kinds() -> None:
    assert {c["spec"]["names"]["kind"] for c in CRDS} == {
        "Budget",
        "BudgetPolicy",
        "BudgetDimensions",
        "BudgetNamespaces",
    }
    assert all(c["spec"]["group"] == "budgets.extproc.dev" for c in CRDS)


@pytest.mark.parametrize("doc", our_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_document_the_sidecar_loads_is_valid_for_its_crd(doc: dict[str, Any]) -> None:
    assert list(validator(doc["kind"]).iter_errors(doc)) == []


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"subject": {"k": "a|b"}}, "subject"),
        ({"subject": {f"k{i}": "v" for i in range(17)}}, "subject"),
        ({"limit": {"unit": "Euros", "amount": 5}}, "unit"),
        ({"limit": {"unit": "USD", "amount": 0}}, "amount"),
        ({"window": {"unit": "Fortnight"}}, "unit"),
        ({"onBudgetExceeded": "Warn"}, "onBudgetExceeded"),
        ({"onBudgetExeeded": "Block"}, "onBudgetExeeded"),
    ],
)
def test_the_crd_refuses_what_the_loader_refuses(tmp_path: Path, entry: dict[str, Any], field: str) -> None:
    base = {
        "name": "ok",
        "limit": {"unit": "USD", "amount": 5},
        "window": {"unit": "Day"},
        "onBudgetExceeded": "Block",
    }
    doc = {
        "apiVersion": GROUP,
        "kind": "Budget",
        "metadata": {"name": "b"},
        "spec": {"budgets": [{**base, **entry}]},
    }
    errors = list(validator("Budget").iter_errors(doc))
    assert errors and any(field in str(e.path) or field in e.message for e in errors)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"b\.yaml:\d+: "):
        load_config([path])
