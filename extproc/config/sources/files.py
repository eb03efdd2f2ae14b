"""The file source: YAML files, folders of them, and mounted ConfigMaps.

A file is fixed as a whole, so this source is all or nothing: `load_config` returns a
complete `Config` or raises one `ConfigError` listing every problem as
`file:line: field.path: reason`, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from extproc.config.assemble import assemble
from extproc.config.documents import yaml_documents
from extproc.config.errors import ConfigError, Problem
from extproc.config.fields import Reporter
from extproc.config.kinds import Fragment, parse_document
from extproc.config.kinds.catalog import catalog_text
from extproc.config.model import Config

__all__ = ["CONFIGMAP_DATA", "CONFIG_SUFFIXES", "Entry", "config_entries", "load_config"]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# The kubelet's link to the current timestamped folder of a mounted ConfigMap.
CONFIGMAP_DATA = "..data"


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing under a configuration folder that matters: a config file, a folder on
    the way to some, or a mounted ConfigMap's `..data` link (whose swap is an update)."""

    path: str
    kind: str  # "file", "folder" or "configmap-data"


def config_entries(folder: str, on_error: Callable[[str, OSError], None]) -> Iterator[Entry]:
    """The configuration under a folder, recursively, in name order: the one walk that the
    loader reads and the watcher fingerprints.

    Names starting with `.` are skipped: editors' swap files, and in a mounted ConfigMap
    the `..data` and `..2024_...` folders that the visible names already link into (the
    `..data` link itself is reported, for the watcher). Symlink loops are walked once.
    """
    yield from _walk(folder, on_error, set())


def _walk(folder: str, on_error: Callable[[str, OSError], None], visited: set[str]) -> Iterator[Entry]:
    real = os.path.realpath(folder)
    if real in visited:  # a symlink loop
        return
    visited.add(real)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        on_error(folder, error)
        return
    for entry in entries:
        path = os.path.join(folder, entry.name)
        if entry.name == CONFIGMAP_DATA:
            yield Entry(path, "configmap-data")
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield Entry(path, "folder")
            yield from _walk(path, on_error, visited)
        elif entry.name.lower().endswith(CONFIG_SUFFIXES):
            yield Entry(path, "file")


def _config_files(root: Path, problems: list[Problem]) -> Iterator[Path]:
    """A file as given (a missing one is reported when read), or a folder's config files."""
    if not root.is_dir():
        yield root
        return

    def unlisted(folder: str, error: OSError) -> None:
        problems.append(Problem(folder, 0, "(file)", f"cannot list folder: {error.strerror or error}"))

    for entry in config_entries(str(root), unlisted):
        if entry.kind == "file":
            yield Path(entry.path)


def _read(path: Path, r: Reporter) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as error:
        r.add(0, "(file)", f"cannot read: {error.strerror or error}")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        r.add(0, "(file)", "cannot read: not UTF-8 text")
        return None


def load_config(paths: Sequence[str | Path], catalog_files: Sequence[str | Path] = ()) -> Config:
    """Reads and validates the configuration in `paths` (files or folders) and the
    `--catalog` files; raises ConfigError listing every problem found."""
    problems: list[Problem] = []
    fragments: list[Fragment] = []
    attempted: list[str] = []  # the files in the order read, to sort problems by
    sources: list[str] = []
    read: set[str] = set()
    for given in paths:
        for path in _config_files(Path(given), problems):
            real = os.path.realpath(path)
            if real in read:  # named twice, e.g. a file and its folder
                continue
            read.add(real)
            attempted.append(str(path))
            r = Reporter(str(path), problems)
            text = _read(path, r)
            if text is None:
                continue
            sources.append(str(path))
            for document in yaml_documents(r, text):
                fragments += parse_document(r, document)

    catalogs = []
    for given in catalog_files:
        attempted.append(str(given))
        r = Reporter(str(given), problems)
        text = _read(Path(given), r)
        if text is None:
            continue
        sources.append(str(given))
        document = catalog_text(r, text, str(given))
        if document is not None:
            catalogs.append(document)

    assembly = assemble(fragments, catalogs, sources)
    problems += assembly.problems(fragments)
    if problems:
        raise ConfigError(_in_file_order(problems, attempted))
    return assembly.config


def _in_file_order(problems: list[Problem], files: list[str]) -> list[Problem]:
    """Files in the order read, each top to bottom, as an operator fixes them; problems
    found only when resources met (a Parameters naming a missing ConfigMap) move into place."""
    order: dict[str, int] = {}
    for file in [*files, *(problem.file for problem in problems)]:
        order.setdefault(file, len(order))
    return sorted(problems, key=lambda problem: (order[problem.file], problem.line))
