"""Field reporting: where a document's problems go, and typed access to its fields.

Each check adds a problem and carries on, so an operator sees every problem at once. The
accessors return None for a wrong or missing value (having reported it), so a parser can
check every field before deciding whether it can build its object.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from extproc.config.documents import Map, Node, Scalar, Seq, describe, is_null, join
from extproc.config.errors import Problem

__all__ = ["Reporter"]

E = TypeVar("E", bound=enum.Enum)


class Reporter:
    """Where one file's (or one object's) problems go: each check adds one and carries on.

    Its accessors return None for a wrong or missing value (having reported it), so
    a parser can check every field before deciding whether it can build its object.
    `file` names where the problems are: a path, or for an object read from the
    Kubernetes API (which has no lines, `line` -1) the object itself.
    """

    def __init__(self, file: str, sink: list[Problem], base: str = "", separator: str = ".") -> None:
        self.file = file
        self._sink = sink
        # A document nested in another (a `List` item, a ConfigMap's catalog) reports its
        # paths under the outer one's, e.g. `data.catalog.json: providers.openai`.
        self._base = base
        self._separator = separator

    def nested(self, base: str, separator: str = ".") -> Reporter:
        joined = f"{self._base}{self._separator}{base}" if self._base else base
        return Reporter(self.file, self._sink, joined, separator)

    def add(self, line: int, path: str, reason: str) -> None:
        reason = " ".join(reason.split())  # one problem, one output line, whatever a value holds
        if self._base:
            path = f"{self._base}{self._separator}{path}" if path else self._base
        self._sink.append(Problem(self.file, line, path or "(document)", reason))

    def apart(self) -> Reporter:
        """A reporter for one object of this file: the same place, problems of its own.

        Several objects share a file (or a `List`); each keeps its problems apart so that
        a source can tell which of them is valid.
        """
        return Reporter(self.file, [], self._base, self._separator)

    @property
    def problems(self) -> list[Problem]:
        return self._sink

    def count(self) -> int:
        """How many problems so far: a parser compares before and after to know if a part is valid."""
        return len(self._sink)

    def site(self, line: int) -> str:
        return f"{self.file}:{line}" if line >= 0 else self.file

    def get(self, parent: Map | None, key: str, path: str, *, required: bool = False) -> Node | None:
        """A field's node; absent and null are the same, as `kubectl apply` treats them."""
        if parent is None:
            return None
        node = parent.fields.get(key)
        if node is None or is_null(node):
            if required:
                line = parent.key_lines[key] if node is not None else parent.line
                self.add(line, join(path, key), "is required")
            return None
        return node

    def only(self, parent: Map | None, path: str, allowed: Sequence[str]) -> None:
        """Rejects fields we do not know, which are most often typos of ones we do."""
        if parent is None:
            return
        for key in parent.fields:
            if key in allowed:
                continue
            guess = difflib.get_close_matches(key, allowed, n=1)
            hint = f' (did you mean "{guess[0]}"?)' if guess else ""
            self.add(
                parent.key_lines[key],
                join(path, key),
                f"unknown field{hint}; expected one of: {', '.join(allowed)}",
            )

    def mapping(self, node: Node | None, path: str) -> Map | None:
        if node is None or isinstance(node, Map):
            return node
        self.add(node.line, path, f"must be a mapping, got {describe(node)}")
        return None

    def sequence(self, node: Node | None, path: str) -> Seq | None:
        if node is None or isinstance(node, Seq):
            return node
        self.add(node.line, path, f"must be a list, got {describe(node)}")
        return None

    def string(self, node: Node | None, path: str) -> str | None:
        if node is None:
            return None
        if isinstance(node, Scalar) and isinstance(node.value, str):
            if node.value:
                return node.value
            self.add(node.line, path, "must not be empty")
            return None
        self.add(node.line, path, f"must be a string, got {describe(node)}")
        return None

    def text(self, node: Node, path: str) -> str | None:
        """A scalar as the string it spells: where only text makes sense, `5` means "5"."""
        if isinstance(node, Scalar) and node.value is not None:
            return node.value if isinstance(node.value, str) else node.text
        self.add(node.line, path, f"must be a string, got {describe(node)}")
        return None

    def text_map(self, node: Node | None, path: str) -> dict[str, str] | None:
        """A string-to-string map such as labels; absent is empty, None means invalid."""
        if node is None:
            return {}
        parent = self.mapping(node, path)
        if parent is None:
            return None
        result: dict[str, str] = {}
        valid = True
        for key, value in parent.fields.items():
            text = self.text(value, join(path, key))
            if text is None:
                valid = False
            else:
                result[key] = text
        return result if valid else None

    def one_of(self, node: Node | None, path: str, allowed: Sequence[str], what: str) -> str | None:
        if node is None:
            return None
        if isinstance(node, Scalar) and isinstance(node.value, str) and node.value in allowed:
            return node.value
        expected = ", ".join(allowed)
        if isinstance(node, Scalar) and node.value is not None:
            self.add(node.line, path, f"unknown {what} {describe(node)}; expected one of: {expected}")
        else:
            self.add(node.line, path, f"must be one of: {expected}; got {describe(node)}")
        return None

    def choice(self, node: Node | None, path: str, enum_type: type[E], what: str) -> E | None:
        members = {member.value: member for member in enum_type}
        value = self.one_of(node, path, list(members), what)
        return None if value is None else members[value]

    def boolean(self, node: Node | None, path: str) -> bool | None:
        if node is None:
            return None
        if isinstance(node, Scalar) and isinstance(node.value, bool):
            return node.value
        self.add(node.line, path, f"must be true or false, got {describe(node)}")
        return None

    def decimal(self, node: Node | None, path: str) -> Decimal | None:
        """A number written as a number or a string ("0.50"), kept exact as a Decimal."""
        if node is None:
            return None
        # bool is an int to Python, but `amount: yes` is no number.
        if (
            isinstance(node, Scalar)
            and isinstance(node.value, int | float | Decimal | str)
            and not isinstance(node.value, bool)
        ):
            try:
                number = Decimal(str(node.value).strip())
            except InvalidOperation:
                pass
            else:
                if number.is_finite():
                    return number
        self.add(node.line, path, f"must be a number, got {describe(node)}")
        return None
