"""The `extproc` command line: check, price, spend's errors, the flags' help."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

import pytest

from extproc.cli import _parser, main

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
    total, *parts, source = capsys.readouterr().out.strip().splitlines()
    assert total == "0.0068825"  # the first line alone, for scripts
    assert [p.split() for p in parts] == [["input", "0.0000525"], ["output", "0.00683"]]
    assert source == "source: your catalog (openai/gpt-4o)"


def test_price_as_json_names_its_parts_and_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["price", "--model", "gpt-4o", "--input-tokens", "1000000", "--cached-input", "400000"]
    assert main([*args, "--output-tokens", "10", "--output", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "cost_usd": "2.0001",
        "components": {"input": "1.5", "cached_input": "0.5", "output": "0.0001"},
        "source": "builtin",
        "provider": "openai",
        "model": "gpt-4o",
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--input", "10", "--cached-input", "11", "--output", "1"], "at most --input (10)"),
        (["--input", "10", "--output", "1", "--reasoning", "2"], "part of the output (1)"),
        (["--input", "10", "--output", "1", "--provider", "acme"], "unknown provider 'acme'"),
        (["--input", "10", "--output", "yaml"], "--output is text or json"),
        (["--input", "10"], "--output-tokens N"),
    ],
)
def test_price_refuses_counts_and_providers_that_cannot_be(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["price", "--model", "gpt-4o", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("extproc price: ") and says in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--input", "--output-tokens", "--cached-input"])
def test_a_negative_token_count_is_a_usage_error(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"--input": "10", "--output-tokens": "1", flag: "-3"}
    with pytest.raises(SystemExit) as exit_:
        main(["price", "--model", "gpt-4o", *(x for kv in args.items() for x in kv)])
    assert exit_.value.code == 2
    assert "-3 is negative" in capsys.readouterr().err


def test_price_counts_cached_input_at_the_cache_read_rate(capsys: pytest.CaptureFixture[str]) -> None:
    # built-in gpt-4o: input $2.50, cached input $1.25, output $10 per 1M tokens
    assert (
        main(
            ["price", "--model", "gpt-4o", "--input", "1000000", "--cached-input", "400000", "--output", "0"]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[0] == "2"


def test_price_of_an_unknown_model_fails_saying_it_would_be_free(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["price", "--model", "acme-9000", "--input", "10", "--output", "10"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "acme-9000: not in any catalog (unpriced); the sidecar would price it at $0" in out.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"extproc {importlib.metadata.version('extproc-budgets')}"


def test_every_serve_flag_says_its_environment_variable_and_default() -> None:
    serve = next(
        action.choices["serve"]
        for action in _parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 25
    for action in flags:
        assert "[env EXTPROC_" in (action.help or ""), action.option_strings
        assert "default: " in (action.help or ""), action.option_strings


def test_a_default_from_the_environment_is_checked_like_a_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXTPROC_WORKERS", "two")
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["serve"])
    assert exit_.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err
    monkeypatch.setenv("EXTPROC_WORKERS", "3")
    assert _parser().parse_args(["serve"]).workers == 3


@pytest.mark.parametrize("level", ["loud", "trace"])
def test_a_bad_log_level_is_a_usage_error(level: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--log-level", level])
    assert exit_.value.code == 2
    assert f"'{level}' is not one of debug, info, warning, error" in capsys.readouterr().err
    assert _parser().parse_args(["serve", "--log-level", "WARNING"]).log_level == "warning"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give --config PATH... with --redis-url URL, or --sidecar URL"),
        (["--config", EXAMPLES], "pass --redis-url URL (the one they share) or --sidecar http://HOST:9090"),
        (["--config", EXAMPLES, "--redis-url", "localhost:6379"], "'localhost:6379' is not a Redis URL"),
        (["--sidecar", "localhost:9090"], "give http://HOST:9090"),
        (["--config", EXAMPLES, "--redis-url", "redis://127.0.0.1:1/0"], "cannot read spend from redis://"),
        (["--sidecar", "http://127.0.0.1:1"], "cannot reach the sidecar at http://127.0.0.1:1"),
        (
            ["--config", EXAMPLES, "--redis-url", "redis://127.0.0.1:1/0", "--redis-password-file", "/nope"],
            "cannot read --redis-password-file /nope",
        ),
    ],
)
def test_spend_without_a_store_or_with_one_it_cannot_reach_is_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Port 1 on loopback: nothing listens there, so the connection is refused at once."""
    assert main(["spend", *args]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("extproc spend: ") and says in out.err, out.err
    assert len(out.err.strip().splitlines()) == 1


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
