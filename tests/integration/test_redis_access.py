"""Reaching Redis as production runs it: TLS (with a client certificate), ACL users, and
Sentinel with a master failover, each against real redis-server processes the tests start
(the binary of tests/support/redis_server.py) and certificates they make."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from extproc.store import Claim, Counter, RedisAccess, RedisStore, StoreUnavailable
from extproc.store.base import RecordId
from extproc.store.connect import redis_client
from tests.support.certs import Certs, make_certs
from tests.support.redis_server import RedisProcess, free_port, start_redis

pytestmark = pytest.mark.integration

NOW = time.time()
C = Counter("ns/b/daily|user=ann", 86_400, 900, 1_000_000, True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_redis(certs: Certs, *, client_certs: bool) -> tuple[RedisProcess, int]:
    tls_port = free_port()
    extra = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes" if client_certs else "no",
    ]  # fmt: skip
    return start_redis(extra=extra), tls_port


async def spend_after_recording(store: RedisStore, amount: int) -> int:
    await store.record([Claim(C, amount)], "", NOW, RecordId("w", 1, 1))
    (state,) = await store.read([C], NOW)
    return state.spend


async def test_tls_with_the_servers_ca(certs: Certs) -> None:
    proc, port = tls_redis(certs, client_certs=False)
    good = RedisStore(
        f"rediss://127.0.0.1:{port}/0", timeout_seconds=2, access=RedisAccess(ca_file=str(certs.ca))
    )
    wrong = RedisStore(
        f"rediss://127.0.0.1:{port}/0", timeout_seconds=2, access=RedisAccess(ca_file=str(certs.other_ca))
    )
    try:
        assert await spend_after_recording(good, 7) == 7
        assert not await wrong.ping()  # a server whose certificate that CA did not sign
        with pytest.raises(StoreUnavailable):
            await wrong.read([C], NOW)
    finally:
        await good.close()
        await wrong.close()
        proc.stop()


async def test_mutual_tls_needs_the_client_certificate(certs: Certs) -> None:
    proc, port = tls_redis(certs, client_certs=True)
    url = f"rediss://127.0.0.1:{port}/0"
    with_cert = RedisStore(
        url,
        timeout_seconds=2,
        access=RedisAccess(
            ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key)
        ),
    )
    without = RedisStore(url, timeout_seconds=2, access=RedisAccess(ca_file=str(certs.ca)))
    try:
        assert await spend_after_recording(with_cert, 5) == 5
        assert not await without.ping()
    finally:
        await with_cert.close()
        await without.close()
        proc.stop()


# What the sidecar needs, and no more: its own keys, the scripts, PING and SCAN (for
# `extproc spend`), the connection handshake.
ACL = (
    "extproc on >s3cret ~extproc:* resetchannels -@all "
    "+ping +hello +evalsha +eval +script|load +scan "
    "+hget +hmget +hset +hdel +hincrby +zadd +zrem +zscore +zrange +zrangebyscore "
    "+zremrangebyscore +zremrangebylex +pttl +pexpire"
)


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisProcess]:
    proc = start_redis(extra=["--user", *ACL.split()])
    yield proc
    proc.stop()


async def test_an_acl_user_with_the_least_it_needs(acl_redis: RedisProcess) -> None:
    in_url = RedisStore(f"redis://extproc:s3cret@127.0.0.1:{acl_redis.port}/0", timeout_seconds=2)
    from_file = RedisStore(
        f"redis://extproc@127.0.0.1:{acl_redis.port}/0",
        timeout_seconds=2,
        access=RedisAccess(password="s3cret"),
    )
    wrong = RedisStore(f"redis://extproc:nope@127.0.0.1:{acl_redis.port}/0", timeout_seconds=2)
    try:
        assert await spend_after_recording(in_url, 3) == 3
        await from_file.record([Claim(C, 4)], "", NOW, RecordId("w", 2, 2))
        assert (await from_file.read([C], NOW))[0].spend == 7
        assert await from_file.counters_seen("ns/") == [C.id]
        assert not await wrong.ping()
        with pytest.raises(StoreUnavailable):
            await wrong.read([C], NOW)
    finally:
        for store in (in_url, from_file, wrong):
            await store.close()


def test_urls_it_cannot_use_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unsupported Redis URL scheme 'http'"):
        redis_client("http://127.0.0.1:6379", 0.1)
    with pytest.raises(ValueError, match="use rediss://"):
        redis_client("redis://127.0.0.1:6379", 0.1, RedisAccess(ca_file="/ca.crt"))
    with pytest.raises(ValueError, match="names its service"):
        redis_client("redis+sentinel://127.0.0.1:26379", 0.1)
    with pytest.raises(ValueError, match="host:port"):
        redis_client("redis+sentinel://127.0.0.1/mymaster", 0.1)


# --- Sentinel ---------------------------------------------------------------------------


def sentinel_trio(master_port: int) -> list[RedisProcess]:
    monitor = ["--sentinel", "monitor", "spend", "127.0.0.1", str(master_port), "2"]
    timing = [
        *("--sentinel", "down-after-milliseconds", "spend", "400"),
        *("--sentinel", "failover-timeout", "spend", "2000"),
    ]
    return [start_redis(extra=["--sentinel", *monitor, *timing]) for _ in range(3)]


async def test_through_sentinel_spend_survives_a_master_failover() -> None:
    master = start_redis()
    replica = start_redis(extra=["--replicaof", "127.0.0.1", str(master.port)])
    sentinels = sentinel_trio(master.port)
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    store = RedisStore(f"redis+sentinel://{hosts}/spend/0", timeout_seconds=0.5)
    try:
        assert await spend_after_recording(store, 10) == 10
        # Replicated before the master goes (Redis replication is asynchronous: a master
        # that dies first takes its last writes with it, with or without Sentinel).
        primary, copy = redis.Redis(port=master.port), redis.Redis(port=replica.port)
        deadline = time.monotonic() + 30  # a loaded machine: the first sync can take a while

        def caught_up() -> bool:
            mine = copy.info("replication")
            return (
                mine.get("master_link_status") == "up"
                and mine.get("master_repl_offset", -1) >= primary.info("replication")["master_repl_offset"]
            )

        while not caught_up():
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.05)
        master.stop()
        promoted = None
        for _ in range(100):
            try:
                await store.record([Claim(C, 5)], "", NOW, RecordId("w", 2, 2))
                promoted = (await store.read([C], NOW))[0].spend
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        assert promoted == 15  # the replica, now master: the old 10 and the new 5
        assert redis.Redis(port=replica.port).role()[0] in (b"master", "master")
    finally:
        await store.close()
        for proc in (*sentinels, replica, master):
            proc.stop()


def test_a_sentinel_url_with_tls_files_and_credentials_builds_a_client(certs: Certs) -> None:
    client = redis_client(
        "rediss+sentinel://user:pw@127.0.0.1:26379,127.0.0.1:26380/spend/2",
        0.1,
        RedisAccess(ca_file=str(certs.ca)),
    )
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"], kwargs["ssl_ca_certs"]) == (
        "user",
        "pw",
        2,
        str(certs.ca),
    )
