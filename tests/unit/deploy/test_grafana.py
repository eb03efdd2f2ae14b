"""The Grafana dashboard in deploy/: valid JSON of the panels it names, every query parsed by
the real promtool, and every metric it reads one the sidecar exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from extproc.admission import Snapshot
from extproc.config.model import Config
from extproc.gauges import BudgetGauges
from extproc.store import MemoryStore
from extproc.telemetry import Metrics, StoreStats
from tests.unit.deploy.test_prometheus_rule import RULE, promtool

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "kubernetes" / "components" / "grafana-dashboard" / "extproc-budgets.json"
_METRIC = re.compile(r"\b((?:extproc|gen_ai)_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Every series and label name a sidecar with Redis exports (histograms with their
    suffixes), once it has counted a request."""
    metrics = Metrics()

    class Stats:  # what a FailoverStore's stats() names
        def stats(self) -> dict[str, int]:
            return dict.fromkeys(StoreStats._HELP, 0)

    metrics.registry.register(StoreStats(Stats()))
    metrics.registry.register(BudgetGauges(lambda: Snapshot(Config()), MemoryStore()))
    metrics.count("r", "m", 1, 1, 1, operation="openai.chat", provider="openai", request_model="m", seconds=1)
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(label for sample in family.samples for label in sample.labels)
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_sum", "_count", "_bucket"))
    return names


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_shows_what_finops_asks_for() -> None:
    titles = [title for title, _ in queries()]
    for wanted in ("Spend by budget", "Spend by team", "Remaining", "Blocked", "Top models"):
        assert any(t.startswith(wanted) for t in titles), wanted
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "extproc-budgets"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}


def test_every_query_parses(tmp_path: Path) -> None:
    # promtool parses expressions in rule files: each query becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": expr.replace("$namespace", ".*")}
                    for i, (_, expr) in enumerate(queries())
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", "dashboard.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_read_is_one_the_sidecar_exports() -> None:
    exported = exported_names()
    read = {name for _, expr in queries() for name in _METRIC.findall(expr)}
    read |= set(_METRIC.findall(RULE.read_text()))
    assert read - exported == set()
    assert {"extproc_budget_utilization", "extproc_cost_usd_total", "gen_ai_client_token_usage_sum"} <= read
