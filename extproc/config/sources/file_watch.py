"""Live configuration: notice when the files behind the running `Config` change, and reload.

The watcher polls a cheap fingerprint of every input (`stat` and `lstat` of each file the
loader would read and of the symlinks on the way, plus the resolved targets of the paths
given and of a mounted ConfigMap's `..data` link). Polling is deliberate: a Kubernetes
ConfigMap volume updates by atomically swapping `..data` to a new timestamped folder, which
inotify does not report reliably on the visible names, and polling needs no dependency.

When the fingerprint changes, the watcher waits until it holds still for one more short
poll (an editor or the kubelet writes several files), loads once, and hands the result
to `on_change`, or every problem to `on_error`: a configuration that fails validation is
never applied, so the caller keeps the last good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from extproc.background import Background
from extproc.config.errors import ConfigError, Problem
from extproc.config.model import Config
from extproc.config.sources.files import config_entries, load_config
from extproc.telemetry import log

__all__ = ["ConfigWatcher", "Fingerprint", "Mark", "fingerprint"]

# File timestamps are as coarse as the filesystem's clock (a tick on Linux, 2 s on FAT):
# a file changed this recently may change again without its stat changing, so its content
# is hashed too until a look after that window settles it (git's "racily clean" entries).
_RACY_NS = 2_000_000_000
# How many extra short polls to wait for files that keep changing before loading anyway.
_MAX_SETTLE_POLLS = 20

# (device, inode, size, mtime, ctime): what changes when a file is written or replaced.
_Stamp = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Mark:
    """One input as last seen: a file, a folder, or a symlink on the way to one."""

    path: str
    # The path itself (lstat: a symlink's own identity), and what it leads to (stat).
    # None: missing. A folder's stamp is only its identity: its mtime moves whenever an
    # editor drops a swap file in it, which is no reason to reload.
    own: _Stamp | None
    target: _Stamp | None
    # The resolved path, for links whose target can change (given paths, `..data`).
    real: str | None = None
    # The content's hash, only for a file seen while its timestamps were too recent to trust.
    digest: str | None = None
    # Whether that hash may still change without the stamp changing; not part of equality,
    # so a file settling down is not itself a change.
    racy: bool = field(default=False, compare=False)


Fingerprint = tuple[Mark, ...]


def fingerprint(
    paths: Sequence[str | Path], catalog_files: Sequence[str | Path] = (), previous: Fingerprint = ()
) -> Fingerprint:
    """The inputs of `load_config(paths, catalog_files)` as they are now.

    `previous` (the last fingerprint taken) carries the content hashes of files that were
    racy then, so that a file settling down does not look like a change.
    """
    before = {mark.path: mark for mark in previous}
    now_ns = time.time_ns()
    marks: list[Mark] = []
    for given in paths:
        root = str(given)
        marks.append(_mark(root, before.get(root), now_ns, resolve=True))
        if os.path.isdir(root):
            marks.extend(_folder(root, before, now_ns))
    for given in catalog_files:
        path = str(given)
        marks.append(_mark(path, before.get(path), now_ns, resolve=True))
    return tuple(marks)


def _folder(folder: str, before: dict[str, Mark], now_ns: int) -> Iterator[Mark]:
    """The marks under a folder, walked as the loader walks it (`files.config_entries`)."""
    for entry in config_entries(folder, lambda _folder, _error: None):  # the loader reports those
        yield _mark(entry.path, before.get(entry.path), now_ns, resolve=entry.kind == "configmap-data")


def _mark(path: str, before: Mark | None, now_ns: int, *, resolve: bool = False) -> Mark:
    own = _stat(path, os.lstat)
    followed = _stat(path, os.stat)
    target = _stamp(followed) if followed is not None else None
    real = os.path.realpath(path) if resolve else None
    digest: str | None = None
    racy = False
    if followed is not None and stat.S_ISREG(followed.st_mode):
        racy = now_ns - max(followed.st_mtime_ns, followed.st_ctime_ns) < _RACY_NS
        same = before is not None and before.target == target
        if racy or (same and before is not None and before.racy):
            digest = _digest(path)  # recent, or recent when last seen: hash what it holds now
        elif same and before is not None:
            digest = before.digest  # settled: the hash taken when it last could change, if any
    return Mark(path, _stamp(own) if own is not None else None, target, real, digest, racy)


def _stat(path: str, how: Callable[[str], os.stat_result]) -> os.stat_result | None:
    try:
        return how(path)
    except OSError:
        return None


def _stamp(result: os.stat_result) -> _Stamp:
    if stat.S_ISDIR(result.st_mode):
        return (result.st_dev, result.st_ino, 0, 0, 0)
    return (result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns, result.st_ctime_ns)


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "blake2b").hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Polls the configuration's inputs every `interval` seconds and reloads on a change.

    `on_change` gets each new valid `Config`; `on_error` gets the problems of one that
    failed validation (or the exception that stopped it loading or applying), and nothing
    is applied then. Both run on the event loop, between requests; loading runs in a
    thread so that requests keep flowing meanwhile. `loaded_from` is the fingerprint taken
    before the running configuration was loaded (default: when `start` is called), so an
    edit made while the sidecar was starting up is not missed.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        catalog_files: Sequence[str | Path],
        on_change: Callable[[Config], None],
        on_error: Callable[[list[Problem] | Exception], None],
        interval: float,
        *,
        loaded_from: Fingerprint | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.paths = tuple(paths)
        self.catalog_files = tuple(catalog_files)
        self.interval = interval
        # Long enough for a burst of writes to finish, short next to the interval.
        self.settle = min(interval, 0.1)
        self._on_change = on_change
        self._on_error = on_error
        # The inputs as last looked at: loaded from, or rejected (not retried until they change).
        self._seen = loaded_from
        self._loop = Background("config-watcher", self._run)

    def start(self) -> None:
        if self._seen is None:
            self._seen = fingerprint(self.paths, self.catalog_files)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # a callback's bug must not end the watching
                log.exception("configuration watch failed")

    async def poll(self) -> bool:
        """One look: if the inputs changed, wait for them to settle and reload once.

        Returns whether a reload was attempted.
        """
        seen = self._seen or ()
        current = await asyncio.to_thread(fingerprint, self.paths, self.catalog_files, seen)
        if current == seen:
            self._seen = current  # keeps the racy files' hashes current
            return False
        for _ in range(_MAX_SETTLE_POLLS):
            await asyncio.sleep(self.settle)
            again = await asyncio.to_thread(fingerprint, self.paths, self.catalog_files, current)
            settled = again == current
            current = again
            if settled:
                break
        # Taken before loading: anything written during the load shows as a change next poll.
        self._seen = current
        try:
            config = await asyncio.to_thread(load_config, self.paths, self.catalog_files)
        except ConfigError as error:
            self._on_error(error.problems)
            return True
        except Exception as error:
            self._on_error(error)
            return True
        try:
            self._on_change(config)
        except Exception as error:
            self._on_error(error)
        return True
