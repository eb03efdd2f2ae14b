"""deploy/'s PrometheusRule, with the real promtool (Debian's prometheus package, which
`make test` installs): the rules parse, and each alert fires on the series it is meant for,
at the thresholds it names, and not before."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheus-rule.yaml"
BUDGET = {"budget_id": "team-a/teams/per-user", "subject": "user=ann", "unit": "Tokens"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs Debian's prometheus package"
    return found


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _alert(
    name: str, at: str, labels: dict[str, str] | None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    expected = [] if labels is None else [{"exp_labels": labels, "exp_annotations": annotations or {}}]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_the_rules_parse(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(yaml.safe_load(RULE.read_text())["spec"]))
    result = _run(tmp_path, "check", "rules", "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_the_alerts_fire_at_80_95_and_100_percent_and_on_store_trouble(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(yaml.safe_load(RULE.read_text())["spec"]))
    # Two replicas export the same shared figure: one alert per budget and subject.
    utilization = "0.5 0.85x9 0.97x4 1x4"  # minutes 0, 1-10, 11-15, 16-20
    pod = {"namespace": "agentgateway-system"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    _series("extproc_budget_utilization", {**BUDGET, **pod, "pod": "a"}, utilization),
                    _series("extproc_budget_utilization", {**BUDGET, **pod, "pod": "b"}, utilization),
                    _series("extproc_store_errors_total", {**pod, "pod": "a", "op": "admit"}, "0+5x20"),
                    _series("extproc_store_pending_records", {**pod, "pod": "b"}, "0 3x20"),
                ],
                "alert_rule_test": [
                    _alert("LLMBudgetAt80Percent", "5m", None),  # not yet: 5 minutes at 85% are needed
                    _alert(
                        "LLMBudgetAt80Percent",
                        "8m",
                        {**BUDGET, "severity": "info"},
                        {
                            "summary": "Budget team-a/teams/per-user (user=ann) is at 85% of its limit",
                            "description": "Spend and holds are 80% of the limit or more. See"
                            " extproc_budget_exhaustion_seconds for when it runs out at the current"
                            " burn rate.",
                        },
                    ),
                    _alert("LLMBudgetAt80Percent", "14m", None),  # 95% is the next alert's
                    _alert(
                        "LLMBudgetAt95Percent",
                        "14m",
                        {**BUDGET, "severity": "warning"},
                        {"summary": "Budget team-a/teams/per-user (user=ann) is at 97% of its limit"},
                    ),
                    _alert("LLMBudgetExhausted", "15m", None),
                    _alert(
                        "LLMBudgetExhausted",
                        "17m",
                        {**BUDGET, "severity": "critical"},
                        {
                            "summary": "Budget team-a/teams/per-user (user=ann) is at its limit",
                            "description": "A Block entry now answers 429 (an Audit one logs). It is under"
                            " the limit again in extproc_budget_reset_seconds.",
                        },
                    ),
                    _alert(
                        "LLMBudgetStoreErrors",
                        "12m",
                        {**pod, "pod": "a", "severity": "warning"},
                        {
                            "summary": "The sidecar a gets errors from Redis",
                            "description": "Admissions follow each route's failureMode meanwhile; records are"
                            " kept and sent again (extproc_store_pending_records).",
                        },
                    ),
                    _alert(
                        "LLMBudgetUnconfirmedRecords",
                        "15m",
                        {**pod, "pod": "b", "severity": "warning"},
                        {
                            "summary": "3 spend records of b are not confirmed by Redis",
                            "description": "They are journaled (with --journal-dir) and sent again"
                            " until Redis confirms them; spend others see lags meanwhile.",
                        },
                    ),
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _run(tmp_path, "test", "rules", "tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
