"""The journal on a real filesystem: append, acknowledge, recover, compact, and what goes wrong."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from extproc.store import journal as journal_module
from extproc.store.base import Claim, Counter
from extproc.store.journal import Journal, JournaledRecord, JournalLocked

DAY = Counter("ns/b/daily|user=ann", 86_400, 900, 100, True)
AUDIT = Counter("ns/b/audit|", 86_400, 900, 5, False)


def record(seq: int, amount: int = 10, writer: str = "w1", now: float = 1_700_000_000.0) -> JournaledRecord:
    return JournaledRecord(writer, seq, now, (Claim(DAY, amount), Claim(AUDIT, 1)))


def segments(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("journal-*.jsonl"))


async def test_unacknowledged_records_come_back_whole_and_acknowledged_ones_do_not(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    assert j.open() == []
    for seq in (1, 2, 3):
        assert j.append(record(seq, amount=seq * 10))
    j.ack(record(2))
    await j.close()  # as after a kill: nothing else happened to the files

    again = Journal(tmp_path)
    recovered = again.open()
    assert [(r.writer, r.seq, r.claims) for r in recovered] == [
        ("w1", 1, (Claim(DAY, 10), Claim(AUDIT, 1))),
        ("w1", 3, (Claim(DAY, 30), Claim(AUDIT, 1))),
    ]
    # Compacted on the way: one segment holding exactly those two.
    assert len(segments(tmp_path)) == 1
    assert again.unacknowledged == 2
    await again.close()


async def test_a_truncated_or_corrupted_line_is_skipped_and_the_rest_replayed(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    for seq in (1, 2, 3):
        j.append(record(seq))
    await j.close()
    (path,) = tmp_path.glob("journal-*.jsonl")
    lines = path.read_bytes().split(b"\n")
    lines[1] = b'{"r": ["w1", 2], "t": 1.0, "c": [[' + b"\xff garbage"
    # ...and the last line cut short, as a crash in the middle of a write leaves it.
    path.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][: len(lines[2]) // 2])

    again = Journal(tmp_path)
    assert [r.seq for r in again.open()] == [1]
    assert again.stats.bad_lines == 2
    await again.close()


async def test_a_second_process_cannot_use_the_same_directory(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    with pytest.raises(JournalLocked):
        Journal(tmp_path).open()
    await j.close()
    other = Journal(tmp_path)
    other.open()  # free again once the first let go
    await other.close()


async def test_when_full_it_compacts_first_then_refuses_and_counts(tmp_path: Path) -> None:
    size = len(record(1).line())
    j = Journal(tmp_path, max_bytes=size * 3 + 10)
    j.open()
    assert j.append(record(1)) and j.append(record(2))
    j.ack(record(1))
    j.ack(record(2))
    # The acknowledgements take room too: compaction rewrites only what is open (nothing).
    assert j.append(record(3)) and j.append(record(4)) and j.append(record(5))
    assert not j.append(record(6))
    assert j.stats.full == 1
    assert j.unacknowledged == 3
    await j.close()


async def test_a_segment_goes_once_every_record_in_it_was_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "_SEGMENT_BYTES", len(record(1).line()) * 2)
    j = Journal(tmp_path)
    j.open()
    for seq in range(1, 7):
        j.append(record(seq))
    assert len(segments(tmp_path)) == 3
    j.ack(record(1))
    j.ack(record(2))
    assert len(segments(tmp_path)) == 2
    await j.close()


async def test_a_failed_write_is_counted_and_the_record_lives_in_memory_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journal(tmp_path)
    j.open()

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", no_space)
    assert not j.append(record(1))
    assert j.stats.write_errors == 1 and j.unacknowledged == 0
    monkeypatch.undo()
    assert j.append(record(2))
    await j.close()


async def test_always_fsyncs_before_returning_and_concurrent_appends_share_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    j = Journal(tmp_path, fsync="always")
    j.open()
    before = len(synced)

    async def one(seq: int) -> None:
        j.append(record(seq))
        await j.synced()

    await asyncio.gather(*(one(seq) for seq in range(1, 21)))
    assert 1 <= len(synced) - before <= 3  # group commit: 20 appends, one or two fsyncs
    assert not j._dirty
    await j.close()


async def test_everysec_fsyncs_in_the_background(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync="everysec")
    j.open()
    j.start()
    j.append(record(1))
    await j.synced()  # returns at once
    assert j._dirty
    for _ in range(30):
        if not j._dirty:
            break
        await asyncio.sleep(0.1)
    assert not j._dirty
    await j.close()


def test_an_unknown_fsync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="always, everysec"):
        Journal(tmp_path, fsync="sometimes")
