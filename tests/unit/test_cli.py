"""The `extproc` command line: check, price."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = str(ROOT / "examples")


def test_check_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", EXAMPLES]) == 0
    assert capsys.readouterr().out.startswith("ok: 4 files, 2 budgets (5 entries), 1 policies, 1 catalogs")


def test_check_prints_one_file_line_problem_per_line_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: budgets.extproc.dev/v1alpha1\nkind: Budget\nmetadata: {name: b}\nspec:\n  budgets:\n"
        "  - name: ok\n    limit: {unit: Euros, amount: 5}\n    window: {unit: Fortnight}\n"
        "    onBudgetExceeded: Block\n"
    )
    assert main(["check", str(bad)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad}:7: spec.budgets[0].limit.unit: ")
    assert lines[1].startswith(f"{bad}:8: spec.budgets[0].window.unit: ")


def test_price_of_the_reports_call_with_the_reports_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["price", "--model", "gpt-4o-2024-08-06", "--input", "21", "--output", "683", "--config", EXAMPLES]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == "0.0068825"


def test_price_counts_cached_input_at_the_cache_read_rate(capsys: pytest.CaptureFixture[str]) -> None:
    # built-in gpt-4o: input $2.50, cached input $1.25, output $10 per 1M tokens
    assert (
        main(
            ["price", "--model", "gpt-4o", "--input", "1000000", "--cached-input", "400000", "--output", "0"]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == "2"


def test_price_of_an_unknown_model_is_zero_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["price", "--model", "acme-9000", "--input", "10", "--output", "10"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "0"
    assert "not in any catalog" in out.err


def test_check_warns_of_a_budget_no_policy_discovers_and_a_policy_that_discovers_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(
        "apiVersion: budgets.extproc.dev/v1alpha1\nkind: Budget\nmetadata: {name: b, namespace: team-b}\n"
        "spec:\n  budgets:\n  - {name: e, limit: {unit: USD, amount: 5}, window: {unit: Day},"
        " onBudgetExceeded: Block}\n---\n"
        "apiVersion: budgets.extproc.dev/v1alpha1\nkind: BudgetPolicy\n"
        "metadata: {name: p, namespace: team-a}\n"
        "spec: {targetRefs: [{kind: HTTPRoute, name: chat}]}\n"
    )
    assert main(["check", str(tmp_path)]) == 0  # warnings, not errors: the files are valid
    assert capsys.readouterr().err.splitlines() == [
        'warning: budget team-b/b: no policy\'s discovery reaches namespace "team-b"; it is not enforced',
        "warning: policy team-a/p: its discovery (Same) reaches no budget",
    ]


def test_check_refuses_a_misspelt_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "typo.yaml").write_text(
        "apiVersion: enterpriseagentgateway.solo.io/v1alpha1\nkind: EnterpriseAgentGatewayBudget\n"
        "metadata: {name: b}\nspec: {budgets: []}\n"
    )
    assert main(["check", str(tmp_path)]) == 1
    assert 'did you mean "EnterpriseAgentgatewayBudget"?' in capsys.readouterr().err
