"""`notifyAt` on a budget entry: its own thresholds for notifications, checked like the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config import ConfigError, load_config

BUDGET = """\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {{name: b, namespace: ns}}
spec:
  budgets:
  - name: e
    limit: {{unit: Tokens, amount: 100}}
    window: {{unit: Day}}
    onBudgetExceeded: Block
    notifyAt: {notify_at}
"""


def test_an_entry_takes_its_own_thresholds_sorted_once_each(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(BUDGET.format(notify_at="[100, 75, 75]"))
    ((entry,),) = [b.entries for b in load_config([tmp_path]).budgets]
    assert entry.notify_at == (75, 100)


@pytest.mark.parametrize(
    ("notify_at", "says"),
    [
        ("[0]", "spec.budgets[0].notifyAt[0]: a percentage of the limit, 1 to 1000, not 0"),
        ("[80, true]", "spec.budgets[0].notifyAt[1]: a percentage of the limit, 1 to 1000, not True"),
        ('["80%"]', "spec.budgets[0].notifyAt[0]: a percentage of the limit, 1 to 1000, not '80%'"),
        ("[1,2,3,4,5,6,7,8,9,10,11]", "spec.budgets[0].notifyAt: at most 10 thresholds, got 11"),
        ("80", "spec.budgets[0].notifyAt: "),
    ],
)
def test_bad_thresholds_are_refused_with_the_line(tmp_path: Path, notify_at: str, says: str) -> None:
    (tmp_path / "b.yaml").write_text(BUDGET.format(notify_at=notify_at))
    with pytest.raises(ConfigError) as error:
        load_config([tmp_path])
    problems = [str(p) for p in error.value.problems]
    assert any(f"b.yaml:10: {says}" in p for p in problems), problems
