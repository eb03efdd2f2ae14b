"""How the sidecar reaches Redis: a URL plus the files TLS needs, into one redis-py client.

- `redis://[user:password@]host:port/db`: a standalone Redis; ACL user and password in the
  URL, or the password from `--redis-password-file` / `EXTPROC_REDIS_PASSWORD` (so it need
  not sit in a URL, a process list or a manifest).
- `rediss://...`: the same over TLS, the server's certificate checked against
  `--redis-ca-file` (or the system's roots); `--redis-cert-file` and `--redis-key-file`
  present a client certificate (mTLS, `tls-auth-clients yes`).
- `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]` (`rediss+sentinel`
  for TLS): the master of `service` as the Sentinels name it, found again after a failover.
  The same credentials and TLS settings apply to the Sentinels and to the master.

Every connection gets the same deadline and no retries (see `RedisStore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

__all__ = ["RedisAccess", "redis_client"]

_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

try:  # redis-py 8 names it driver_info; earlier releases take lib_name and lib_version
    from redis.driver_info import DriverInfo

    _NO_CLIENT_SETINFO: dict[str, Any] = {"driver_info": DriverInfo(name=None, lib_version=None)}
except ImportError:  # pragma: no cover - depends on the installed redis-py
    _NO_CLIENT_SETINFO = {"lib_name": None, "lib_version": None}
# A connection idle this long is PINGed before use, so a Redis that restarted is noticed
# before a script is sent on a dead socket (a failure there would be "outcome unknown").
_HEALTH_CHECK_SECONDS = 5


@dataclass(frozen=True, slots=True)
class RedisAccess:
    """What a URL does not say: TLS files and a password kept out of the URL."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    password: str | None = None


def _common(timeout_seconds: float, access: RedisAccess, tls: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        # No retries: an automatic retry of a sent increment can double-count, and the
        # caller's deadline has no room for one anyway.
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": _HEALTH_CHECK_SECONDS,
        # No CLIENT SETINFO on connect: one round trip less, and nothing an ACL must allow.
        **_NO_CLIENT_SETINFO,
    }
    if access.password is not None:
        kwargs["password"] = access.password
    if tls:
        kwargs["ssl_cert_reqs"] = "required"
        if access.ca_file:
            kwargs["ssl_ca_certs"] = access.ca_file
        if access.cert_file:
            kwargs["ssl_certfile"] = access.cert_file
        if access.key_file:
            kwargs["ssl_keyfile"] = access.key_file
    return kwargs


def redis_client(url: str, timeout_seconds: float, access: RedisAccess | None = None) -> redis.asyncio.Redis:
    """A client for `url` (see the module docstring); ValueError for a URL it cannot use."""
    access = access or RedisAccess()
    parts = urlsplit(url)
    if parts.scheme in _SENTINEL_SCHEMES:
        return _sentinel_client(parts, timeout_seconds, access)
    if parts.scheme in _CLUSTER_SCHEMES:
        return _cluster_client(parts, timeout_seconds, access)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
            "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    if parts.scheme != "rediss" and (access.ca_file or access.cert_file or access.key_file):
        raise ValueError("TLS files were given for a URL without TLS: use rediss://")
    return redis.asyncio.from_url(url, **_common(timeout_seconds, access, parts.scheme == "rediss"))


def _addresses(parts: Any, what: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"a {what} address must be host:port, got {host!r}")
        found.append((name.strip("[]"), int(port)))
    return found


def _cluster_client(parts: Any, timeout_seconds: float, access: RedisAccess) -> redis.asyncio.RedisCluster:
    """Redis Cluster (or Valkey cluster): the seed nodes in the URL, the rest discovered.

    Retries on: a command sent on a connection that broke is sent again (after a failover,
    to the new master), which the scripts tolerate (records carry their id; holds and
    releases are set operations); MOVED and ASK are followed either way.
    """
    kwargs = _common(timeout_seconds, access, parts.scheme == "rediss+cluster")
    kwargs["retry"] = Retry(NoBackoff(), 2)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme == "rediss+cluster":
        kwargs["ssl"] = True
    nodes = [ClusterNode(host, port) for host, port in _addresses(parts, "cluster node")]
    return redis.asyncio.RedisCluster(startup_nodes=nodes, **kwargs)


def _sentinel_client(parts: Any, timeout_seconds: float, access: RedisAccess) -> redis.asyncio.Redis:
    tls = parts.scheme == "rediss+sentinel"
    sentinels = _addresses(parts, "Sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a Sentinel URL names its service: redis+sentinel://host:port,.../SERVICE[/DB]")
    service = unquote(path[0])
    kwargs = _common(timeout_seconds, access, tls)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if len(path) == 2:
        kwargs["db"] = int(path[1])
    if tls:
        kwargs["ssl"] = True
    sentinel_kwargs = {k: v for k, v in kwargs.items() if k != "db"}
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)
    return manager.master_for(service, redis_class=redis.asyncio.Redis, **kwargs)
