"""Spend in Redis Cluster: a real three-master cluster with a replica each (redis-server
--cluster-enabled yes, made by redis-cli --cluster create), one script per hash slot, holds
undone across slots, records once across slots, and a master failover survived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from extproc.store import Claim, Counter, RedisStore, StoreUnavailable
from extproc.store.base import RecordId
from tests.support.redis_server import RedisCluster

pytestmark = pytest.mark.integration

NOW = time.time()


def counter(name: str, limit: int = 1000) -> Counter:
    return Counter(f"ns/b/{name}|", 86_400, 900, limit, True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    c = RedisCluster()
    yield c
    c.stop()


def _slot(store: RedisStore, c: Counter) -> int:
    from redis.crc import key_slot

    return key_slot(store.keys_for(c.id)[0].encode())


async def test_counters_in_several_slots_are_admitted_recorded_and_read(cluster: RedisCluster) -> None:
    store = RedisStore(cluster.url, timeout_seconds=2, server_clock=True)
    counters = [counter(f"spread-{i}") for i in range(8)]
    assert len({_slot(store, c) for c in counters}) > 1  # the test means something
    try:
        assert (await store.admit([Claim(c, 10) for c in counters], "h1", 60, NOW)).admitted
        held = await store.read(counters, NOW)
        assert [s.held for s in held] == [10] * 8
        record = RecordId("w", 1, 1)
        spent = [Claim(c, i) for i, c in enumerate(counters, start=1)]
        await store.record(spent, "h1", NOW, record)
        await store.record(spent, "h1", NOW, record)  # sent again: once
        states = await store.read(counters, NOW)
        assert [(s.spend, s.held) for s in states] == [(i, 0) for i in range(1, 9)]
        assert store.duplicates == 8
        seen = await store.counters_seen("ns/b/spread-")
        assert seen == sorted(c.id for c in counters)
    finally:
        await store.close()


async def test_a_slot_that_rejects_undoes_the_holds_other_slots_placed(cluster: RedisCluster) -> None:
    store = RedisStore(cluster.url, timeout_seconds=2, server_clock=True)
    full, free = counter("full", limit=5), counter("free-0", limit=1000)
    i = 0
    while _slot(store, free) == _slot(store, full):  # two different slots
        i += 1
        free = counter(f"free-{i}", limit=1000)
    try:
        await store.record([Claim(full, 5)], "", NOW, RecordId("w", 10, 10))
        result = await store.admit([Claim(free, 50), Claim(full, 1)], "h2", 60, NOW)
        assert not result.admitted
        assert [s.over_limit for s in result.states] == [False, True]
        (after,) = await store.read([free], NOW)
        assert after.held == 0  # the hold the free slot placed was released again
    finally:
        await store.close()


async def test_a_master_failover_is_survived(cluster: RedisCluster) -> None:
    store = RedisStore(cluster.url, timeout_seconds=1, server_clock=True)
    c = counter("failover")
    try:
        await store.record([Claim(c, 7)], "", NOW, RecordId("w", 20, 20))
        master = cluster.master_of(store.keys_for(c.id)[0])
        # Replicated before the master goes (Redis replication is asynchronous: a master
        # that dies first takes its last writes with it).
        primary = redis.Redis(port=master.port)
        offset = primary.info("replication")["master_repl_offset"]
        deadline = time.monotonic() + 30  # a loaded machine
        while not any(
            int(v.get("offset", 0)) >= offset
            for k, v in primary.info("replication").items()
            if k.startswith("slave") and isinstance(v, dict)
        ):
            assert time.monotonic() < deadline, "the replica did not catch up"
            await asyncio.sleep(0.05)
        primary.close()
        master.stop()
        spend = None
        for _ in range(150):
            try:
                await store.record([Claim(c, 5)], "", NOW, RecordId("w", 21, 21))
                (state,) = await store.read([c], NOW)
                spend = state.spend
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        assert spend == 12  # on the promoted replica: the 7 before and the 5 after
        assert cluster.master_of(store.keys_for(c.id)[0]) is not master
    finally:
        await store.close()
