"""The short chaos run of `make test` (the long one is `make chaos`): see tests/e2e/chaos.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.chaos import run, run_cluster
from tests.support.http import MockOpenAI

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
async def test_through_hangs_kills_partitions_and_a_killed_sidecar_no_200_is_lost_or_counted_twice(
    tmp_path: Path, upstream: MockOpenAI
) -> None:
    figures = await run(tmp_path, upstream, requests=600, concurrency=8, pause=1.5)
    report = "\n".join(figures.lines())
    assert figures.ok > 0, report
    assert len(figures.faults) == 4, report
    assert (figures.lost, figures.double) == (0, 0), report
    assert figures.overshoot_up <= 1, report
    assert figures.overshoot_outage <= 2, report


@pytest.mark.timeout(240)
async def test_on_a_cluster_whose_master_dies_mid_traffic_no_200_is_lost_or_counted_twice(
    tmp_path: Path, upstream: MockOpenAI
) -> None:
    figures = await run_cluster(tmp_path, upstream, requests=300, concurrency=8)
    report = "\n".join(figures.lines())
    assert figures.statuses.get("200", 0) > 0, report
    assert (figures.lost, figures.double) == (0, 0), report
