"""A durable local journal of spend records not yet confirmed by the shared store.

Every record is appended before it is sent to Redis, and acknowledged once Redis confirmed
it; on start, the records without an acknowledgement are replayed. Records carry their id
(`writer`, `seq`), which the store applies at most once, so a replay after a crash, of a
record Redis did apply before the crash, counts nothing twice.

Durability, as Redis's AOF offers it (`--journal-fsync`):
- `everysec` (default): appends go to the OS at once and are fsynced once a second. A
  killed or crashed *process* loses nothing (the kernel holds the writes); a machine that
  loses power loses at most the last second of records.
- `always`: an append returns only once fsynced (concurrent appends share one fsync). Power
  loss loses nothing the sidecar has answered for; each record pays an fsync (about a
  millisecond on an SSD, more on network disks).
Acknowledgements are never fsynced on their own: one lost means one record replayed, which
the store's record ids make harmless.

Files: `DIR/journal-NNNNNNNN.jsonl` segments, one JSON object a line: a record
`{"r": [writer, seq], "t": now, "c": [[id, window_s, bucket_s, limit, blocking], ...],
"a": [amounts]}` or an acknowledgement `{"k": [writer, seq]}`. A segment is deleted once
every record in it was acknowledged. A line that cannot be read (truncated by a crash in
the middle of a write, corrupted) is skipped with an error line and counted; the rest is
replayed. `DIR/lock` is held (flock) by the one process using the directory.

Bounded by `max_bytes`: when appending would pass it, the journal first compacts (rewrites
only the unacknowledged records); if still full, the record is not journaled: it goes to
Redis as before (and to the in-memory replay queue if Redis is down), an error line says
so once a minute, and `journal_full` counts it. Such a record is lost if the process dies
before Redis confirms it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from extproc.store.base import Claim, Counter

log = structlog.get_logger(__name__)

__all__ = ["FSYNC_MODES", "Journal", "JournalLocked", "JournaledRecord"]

FSYNC_MODES = ("always", "everysec")
_SEGMENT_BYTES = 16 * 1024 * 1024
_FULL_LOG_SECONDS = 60.0


class JournalLocked(Exception):
    """Another process holds the journal directory."""


@dataclass(slots=True)
class JournaledRecord:
    """One record of spend: what the store's `record` is called with, and its id."""

    writer: str
    seq: int
    now: float
    claims: tuple[Claim, ...]
    # The segment it is in (None: not journaled, e.g. the journal was full).
    segment: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.writer, self.seq)

    def line(self) -> bytes:
        counters = [
            [c.id, c.window_seconds, c.bucket_seconds, c.limit, int(c.blocking)]
            for c in (claim.counter for claim in self.claims)
        ]
        amounts = [claim.amount for claim in self.claims]
        body = {"r": [self.writer, self.seq], "t": self.now, "c": counters, "a": amounts}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _parse(line: bytes) -> JournaledRecord | tuple[str, int]:
    """A record, or an acknowledgement's key; ValueError for anything else."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    if "k" in value:
        writer, seq = value["k"]
        return (str(writer), int(seq))
    writer, seq = value["r"]
    counters = tuple(
        Counter(str(i), int(w), int(b), int(limit), bool(blocking)) for i, w, b, limit, blocking in value["c"]
    )
    amounts = tuple(int(a) for a in value["a"])
    if len(amounts) != len(counters):
        raise ValueError("one amount per counter")
    claims = tuple(Claim(c, a) for c, a in zip(counters, amounts, strict=True))
    return JournaledRecord(str(writer), int(seq), float(value["t"]), claims)


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    open_records: int = 0
    size: int = 0


@dataclass(slots=True)
class JournalStats:
    records: int = 0  # appended since start
    acks: int = 0
    full: int = 0  # records not journaled because the journal was full
    bad_lines: int = 0  # lines skipped at recovery
    write_errors: int = 0
    recovered: int = 0  # unacknowledged records found at start
    fsyncs: int = 0


class Journal:
    def __init__(
        self, directory: str | Path, *, fsync: str = "everysec", max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.stats = JournalStats()
        self._segments: dict[int, _Segment] = {}
        self._open: dict[tuple[str, int], JournaledRecord] = {}  # written, not acknowledged
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._dirty = False
        self._last_full_log = 0.0
        self._sync_task: asyncio.Task[None] | None = None
        self._flush: asyncio.Future[None] | None = None

    # -- opening ------------------------------------------------------------------------

    def open(self) -> list[JournaledRecord]:
        """Takes the directory and returns the records never acknowledged, oldest first.

        The journal is compacted on the way: after this it holds exactly those records.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise JournalLocked(f"{self.directory} is used by another process") from exc
        old = sorted(self._segment_files())
        records: dict[tuple[str, int], JournaledRecord] = {}
        acked: set[tuple[str, int]] = set()
        for _, path in old:
            for entry in self._read(path):
                if isinstance(entry, JournaledRecord):
                    records.setdefault(entry.key, entry)
                else:
                    acked.add(entry)
        pending = [r for key, r in records.items() if key not in acked]
        pending.sort(key=lambda r: (r.now, r.writer, r.seq))
        self.stats.recovered = len(pending)
        # Compact: the open records into a fresh segment, fsynced, before the old ones go.
        next_number = (old[-1][0] + 1) if old else 1
        self._start_segment(next_number)
        for record in pending:
            self._write(record)
        self._sync_now()
        for _, path in old:
            with contextlib.suppress(OSError):
                path.unlink()
        if pending or acked:
            log.info(
                "journal recovered",
                directory=str(self.directory),
                unacknowledged=len(pending),
                acknowledged=len(acked),
                bad_lines=self.stats.bad_lines,
            )
        return pending

    def _segment_files(self) -> Iterator[tuple[int, Path]]:
        for path in self.directory.glob("journal-*.jsonl"):
            with contextlib.suppress(ValueError):
                yield int(path.stem.split("-", 1)[1]), path

    def _read(self, path: Path) -> Iterator[JournaledRecord | tuple[str, int]]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.error("journal segment unreadable; skipped", path=str(path), error=str(exc))
            self.stats.bad_lines += 1
            return
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                yield _parse(line)
            except (ValueError, KeyError, TypeError) as exc:
                self.stats.bad_lines += 1
                log.error(
                    "journal line unreadable; skipped", path=str(path), line=number, error=str(exc)[:200]
                )

    # -- appending ----------------------------------------------------------------------

    def append(self, record: JournaledRecord) -> bool:
        """Writes the record (not yet fsynced: `await synced()` for that); False when full."""
        line = record.line()
        if self._bytes() + len(line) > self.max_bytes:
            self.compact()
            if self._bytes() + len(line) > self.max_bytes:
                self.stats.full += 1
                now = time.monotonic()
                if now - self._last_full_log > _FULL_LOG_SECONDS:
                    self._last_full_log = now
                    log.error(
                        "journal full: spend not yet confirmed by Redis is kept in memory only",
                        directory=str(self.directory),
                        max_bytes=self.max_bytes,
                        unacknowledged=len(self._open),
                    )
                return False
        assert self._current is not None
        if self._current.size >= _SEGMENT_BYTES:
            self._start_segment(self._current.number + 1)
        if not self._write(record, line):
            return False
        self.stats.records += 1
        return True

    def ack(self, record: JournaledRecord) -> None:
        """Redis confirmed the record: it need not be replayed."""
        stored = self._open.pop(record.key, None)
        if stored is None or stored.segment is None:
            return
        self.stats.acks += 1
        segment = self._segments.get(stored.segment)
        if segment is not None:
            segment.open_records -= 1
        ack = json.dumps({"k": [record.writer, record.seq]}, separators=(",", ":")).encode() + b"\n"
        self._raw_write(ack)
        if segment is not None and segment.open_records <= 0 and segment is not self._current:
            self._drop(segment)

    async def synced(self) -> None:
        """Returns once what was appended so far is on disk (`always`); at once otherwise."""
        if self.fsync != "always" or not self._dirty:
            return
        if self._flush is None:
            # One fsync for every append made before it starts: group commit.
            self._flush = asyncio.get_running_loop().create_future()
            flush = self._flush
            try:
                await asyncio.sleep(0)  # let the appends of this tick join
                self._flush = None
                await asyncio.to_thread(self._sync_now)
            except BaseException as exc:
                flush.set_exception(exc)
                raise
            else:
                flush.set_result(None)
            return
        await asyncio.shield(self._flush)

    def start(self) -> None:
        """The once-a-second fsync of `everysec`."""
        if self.fsync == "everysec" and self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_every_second())

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        self._sync_now()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def unacknowledged(self) -> int:
        return len(self._open)

    def size(self) -> int:
        return self._bytes()

    # -- compaction -----------------------------------------------------------------------

    def compact(self) -> None:
        """Rewrites the open records into a new segment and drops every older one."""
        if self._current is None:
            return
        old = list(self._segments.values())
        records = list(self._open.values())
        self._open.clear()
        self._start_segment(self._current.number + 1)
        for record in records:
            self._write(record)
        self._sync_now()
        for segment in old:
            self._drop(segment)

    # -- internals ----------------------------------------------------------------------

    def _bytes(self) -> int:
        return sum(s.size for s in self._segments.values())

    def _start_segment(self, number: int) -> None:
        if self._fd is not None:
            self._sync_now()
            os.close(self._fd)
        path = self.directory / f"journal-{number:08d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._current = _Segment(number, path, size=os.fstat(self._fd).st_size)
        self._segments[number] = self._current
        with contextlib.suppress(OSError):  # the new name must survive a crash too
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _write(self, record: JournaledRecord, line: bytes | None = None) -> bool:
        assert self._current is not None
        if not self._raw_write(line or record.line()):
            return False
        record.segment = self._current.number
        self._open[record.key] = record
        self._current.open_records += 1
        return True

    def _raw_write(self, data: bytes) -> bool:
        assert self._fd is not None and self._current is not None
        try:
            written = os.write(self._fd, data)
        except OSError as exc:  # a full disk, say: the record then lives in memory only
            self.stats.write_errors += 1
            log.error("journal write failed", directory=str(self.directory), error=str(exc))
            return False
        if written != len(data):
            # A short write leaves a partial line, which recovery skips; the next line
            # must start on its own line.
            os.write(self._fd, b"\n")
        self._current.size += written
        self._dirty = True
        return written == len(data)

    def _drop(self, segment: _Segment) -> None:
        self._segments.pop(segment.number, None)
        with contextlib.suppress(OSError):
            segment.path.unlink()

    def _sync_now(self) -> None:
        if self._fd is not None and self._dirty:
            self._dirty = False
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
                self.stats.fsyncs += 1

    async def _sync_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._dirty:
                await asyncio.to_thread(self._sync_now)
