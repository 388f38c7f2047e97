"""Throwaway backing services for fault tests: never stop the shared ones.

- `RedisProcess`: a redis-server of our own on a free port, stopped and started
  at will (same port, so clients reconnect to it).
- `TcpProxy`: a TCP relay in front of PostgreSQL; `cut()` drops every connection
  and refuses new ones, `restore()` lets them through again. To the service this
  is exactly a database outage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.ratelimit._support import RedisServer, free_port


class RedisProcess(RedisServer):
    """A throwaway redis-server on a free port (the rate-limit tests' helper)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(free_port(), directory)

    def stop(self) -> None:
        self.kill()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Drop live connections and refuse new ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
