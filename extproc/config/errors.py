"""What a configuration that fails validation reports: every problem, each with a place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, where an editor can jump to it.

    `line` is 1-based; 0 means the file as a whole (it could not be read); -1 means
    `file` names an object read from the Kubernetes API, which has no lines.
    `path` is the field path inside the document, e.g. `spec.budgets[1].limit.amount`.
    """

    file: str
    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        if self.line < 0:
            return f"{self.file}: {self.path}: {self.reason}"
        return f"{self.file}:{self.line}: {self.path}: {self.reason}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists all of them, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))
