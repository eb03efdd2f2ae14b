"""A TCP proxy that a test can turn into a black hole: a network partition that drops
packets, as opposed to a server that refuses connections (which fails fast).

`TcpProxy(target_port)` listens on 127.0.0.1 on a port of its own, on its own event loop in
a daemon thread. `blackhole()`: bytes in either direction are read and thrown away and new
connections are accepted and then ignored, so clients wait for answers that never come;
`heal()`: traffic flows again (on new connections; a connection that lost bytes is closed,
as a partition that ends leaves it broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._blackhole = False
        self._epoch = 0  # bumped by each blackhole: a connection from before is cut on heal
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, sock=self._sock))
        self._ready.set()
        self._loop.run_forever()

    def blackhole(self) -> None:
        self._blackhole = True
        self._epoch += 1

    def heal(self) -> None:
        self._blackhole = False
        self._loop.call_soon_threadsafe(self._cut_all)

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self._blackhole:
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(65536):
                pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self._blackhole:
                    continue  # dropped: the other side waits for it forever
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()

    def stop(self) -> None:
        def shut() -> None:
            self._server.close()
            self._cut_all()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shut)
        self._thread.join(5)
