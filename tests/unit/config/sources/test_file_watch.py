"""The config watcher: edits, new and removed files, a ConfigMap's symlink swap, bad edits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from extproc.config import Config, Problem
from extproc.config.sources import file_watch as watch_module
from extproc.config.sources.file_watch import ConfigWatcher, fingerprint
from tests.support.configmap import MountedConfigMap

INTERVAL = 0.05
# Long enough for any reload to show (interval + settle + load, several times over).
WAIT = 3.0
# How long "nothing happened" is watched for: several polls.
QUIET = 4 * INTERVAL + 0.1


def budget(name: str = "team", entry: str = "daily-tokens", amount: str = "2000") -> str:
    return f"""\
apiVersion: budgets.extproc.dev/v1alpha1
kind: Budget
metadata: {{name: {name}, namespace: ai}}
spec:
  budgets:
  - name: {entry}
    limit: {{unit: Tokens, amount: {amount}}}
    window: {{unit: Day}}
    onBudgetExceeded: Block
"""


CATALOG = '{"providers": {"openai": {"models": {"gpt-4o": {"rates": {"input": "2.50", "output": "10.00"}}}}}}'


class Recorder:
    """Collects what the watcher hands over, in order."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[Config] = asyncio.Queue()
        self.errors: asyncio.Queue[list[Problem] | Exception] = asyncio.Queue()

    def on_change(self, config: Config) -> None:
        self.changes.put_nowait(config)

    def on_error(self, problems: list[Problem] | Exception) -> None:
        self.errors.put_nowait(problems)

    async def change(self) -> Config:
        return await asyncio.wait_for(self.changes.get(), WAIT)

    async def error(self) -> list[Problem] | Exception:
        return await asyncio.wait_for(self.errors.get(), WAIT)

    async def assert_quiet(self) -> None:
        await asyncio.sleep(QUIET)
        assert self.changes.empty(), "reloaded with nothing changed"
        assert self.errors.empty(), "reported an error with nothing changed"


Watch = Callable[..., Recorder]


@pytest.fixture()
async def watch() -> AsyncIterator[Watch]:
    watchers: list[ConfigWatcher] = []

    def start(paths: list[Path], catalogs: list[Path] | None = None, **kwargs: Any) -> Recorder:
        recorder = Recorder()
        watcher = ConfigWatcher(
            paths, catalogs or [], recorder.on_change, recorder.on_error, INTERVAL, **kwargs
        )
        watcher.start()
        watchers.append(watcher)
        return recorder

    yield start
    for watcher in watchers:
        await watcher.stop()


def amounts(config: Config) -> dict[str, int]:
    return {e.name: int(e.amount) for b in config.budgets for e in b.entries}


async def test_an_edited_file_is_reloaded(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(budget(amount="2000"))
    seen = watch([tmp_path])

    path.write_text(budget(amount="3000"))  # same size, very likely the same timestamp tick

    assert amounts(await seen.change()) == {"daily-tokens": 3000}
    await seen.assert_quiet()


async def test_a_file_added_to_a_folder_is_loaded(tmp_path: Path, watch: Watch) -> None:
    (tmp_path / "a.yaml").write_text(budget("a"))
    seen = watch([tmp_path])

    sub = tmp_path / "teams"
    sub.mkdir()
    (sub / "b.yml").write_text(budget("b", entry="b-tokens"))

    config = await seen.change()
    assert sorted(b.name for b in config.budgets) == ["a", "b"]


async def test_a_file_removed_from_a_folder_is_dropped(tmp_path: Path, watch: Watch) -> None:
    (tmp_path / "a.yaml").write_text(budget("a"))
    (tmp_path / "b.yaml").write_text(budget("b"))
    seen = watch([tmp_path])

    (tmp_path / "b.yaml").unlink()

    assert [b.name for b in (await seen.change()).budgets] == ["a"]


async def test_a_configmap_symlink_swap_is_reloaded(tmp_path: Path, watch: Watch) -> None:
    volume = MountedConfigMap(tmp_path / "budgets", {"budgets.yaml": budget(amount="2000")})
    seen = watch([volume.root])

    volume.publish({"budgets.yaml": budget(amount="5000")})

    assert amounts(await seen.change()) == {"daily-tokens": 5000}
    await seen.assert_quiet()


async def test_a_configmap_gaining_a_key_loads_the_new_file(tmp_path: Path, watch: Watch) -> None:
    volume = MountedConfigMap(tmp_path / "budgets", {"a.yaml": budget("a")})
    seen = watch([volume.root])

    volume.publish({"a.yaml": budget("a"), "b.yaml": budget("b", entry="b-tokens")})

    assert sorted(b.name for b in (await seen.change()).budgets) == ["a", "b"]


async def test_a_file_given_by_name_inside_a_configmap_follows_the_swap(tmp_path: Path, watch: Watch) -> None:
    volume = MountedConfigMap(tmp_path / "budgets", {"budgets.yaml": budget(amount="2000")})
    seen = watch([volume.root / "budgets.yaml"])

    volume.publish({"budgets.yaml": budget(amount="7000")})

    assert amounts(await seen.change()) == {"daily-tokens": 7000}


async def test_an_invalid_edit_reports_its_problems_and_applies_nothing(tmp_path: Path, watch: Watch) -> None:
    volume = MountedConfigMap(tmp_path / "budgets", {"budgets.yaml": budget(amount="2000")})
    seen = watch([volume.root])

    volume.publish({"budgets.yaml": budget(amount="-5")})

    problems = await seen.error()
    assert isinstance(problems, list)
    assert [str(p) for p in problems] == [
        f"{volume.root / 'budgets.yaml'}:7: spec.budgets[0].limit.amount: must be positive, got -5"
    ]
    await seen.assert_quiet()


async def test_a_revert_after_an_invalid_edit_applies_again(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(budget(amount="2000"))
    seen = watch([tmp_path])
    path.write_text(budget(amount="2000").replace("Tokens", "Tokenz"))
    assert isinstance(await seen.error(), list)

    path.write_text(budget(amount="2000"))

    assert amounts(await seen.change()) == {"daily-tokens": 2000}


async def test_an_edited_catalog_file_is_reloaded(tmp_path: Path, watch: Watch) -> None:
    (tmp_path / "budgets.yaml").write_text(budget())
    catalog = tmp_path / "prices.json"
    catalog.write_text(CATALOG)
    seen = watch([tmp_path / "budgets.yaml"], [catalog])

    catalog.write_text(CATALOG.replace("10.00", "12.00"))

    config = await seen.change()
    rates = config.catalogs[-1]
    assert "12.00" in repr(rates)


async def test_files_the_loader_skips_do_not_trigger_a_reload(tmp_path: Path, watch: Watch) -> None:
    (tmp_path / "budgets.yaml").write_text(budget())
    seen = watch([tmp_path])

    (tmp_path / ".budgets.yaml.swp").write_text("editor state")
    (tmp_path / "NOTES.md").write_text("not configuration")

    await seen.assert_quiet()


async def test_a_burst_of_writes_is_loaded_once(tmp_path: Path, watch: Watch) -> None:
    (tmp_path / "a.yaml").write_text(budget("a"))
    seen = watch([tmp_path])

    for i in range(5):  # an editor or a generator writing several files in a row
        (tmp_path / f"b{i}.yaml").write_text(budget(f"b{i}"))
        await asyncio.sleep(0.01)

    assert len((await seen.change()).budgets) == 6
    await seen.assert_quiet()


async def test_an_edit_made_before_start_is_reloaded(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(budget(amount="2000"))
    loaded_from = fingerprint([tmp_path])  # taken when the running configuration was loaded

    path.write_text(budget(amount="4000"))
    seen = watch([tmp_path], loaded_from=loaded_from)

    assert amounts(await seen.change()) == {"daily-tokens": 4000}


async def test_an_on_change_that_raises_is_reported_and_watching_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(budget(amount="2000"))
    errors: asyncio.Queue[list[Problem] | Exception] = asyncio.Queue()
    applied: asyncio.Queue[Config] = asyncio.Queue()

    def on_change(config: Config) -> None:
        if amounts(config)["daily-tokens"] == 3000:
            raise RuntimeError("cannot apply")
        applied.put_nowait(config)

    watcher = ConfigWatcher([tmp_path], [], on_change, errors.put_nowait, INTERVAL)
    watcher.start()
    try:
        path.write_text(budget(amount="3000"))
        error = await asyncio.wait_for(errors.get(), WAIT)
        assert isinstance(error, RuntimeError)

        path.write_text(budget(amount="4000"))
        assert amounts(await asyncio.wait_for(applied.get(), WAIT)) == {"daily-tokens": 4000}
    finally:
        await watcher.stop()


def test_two_quick_edits_of_the_same_size_fingerprint_differently(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(budget(amount="2000"))
    first = fingerprint([tmp_path])

    path.write_text(budget(amount="3000"))

    assert fingerprint([tmp_path], previous=first) != first


def test_a_file_settling_down_is_not_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(budget())
    recent = fingerprint([tmp_path])
    assert any(m.digest for m in recent), "a file just written is hashed"

    monkeypatch.setattr(watch_module, "_RACY_NS", 0)  # as if the racy window had passed
    settled = fingerprint([tmp_path], previous=recent)
    later = fingerprint([tmp_path], previous=settled)

    assert recent == settled == later
    assert not any(m.racy for m in later)


def test_an_unchanged_configmap_fingerprints_the_same(tmp_path: Path) -> None:
    volume = MountedConfigMap(tmp_path / "budgets", {"budgets.yaml": budget()})
    first = fingerprint([volume.root])

    assert fingerprint([volume.root], previous=first) == first
    assert any(m.path.endswith("..data") and m.real for m in first)


def test_an_interval_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        ConfigWatcher(["examples/"], [], lambda _: None, lambda _: None, 0)
