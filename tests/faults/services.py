"""Throwaway backing services for fault tests: never stop the shared ones.

- `RedisProcess`: a redis-server of our own on a free port, stopped and started
  at will (same port, so clients reconnect to it).
- `TcpProxy`: a TCP relay in front of PostgreSQL; `cut()` drops every connection
  and refuses new ones, `restore()` lets them through again. To the service this
  is exactly a database outage.
- `PostgresCluster`: a PostgreSQL server of our own (initdb and pg_ctl under a
  temporary directory, on a free port), stopped and started at will: a real
  restart, with the server's own shutdown of every connection.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
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


def _postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian installs it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


INITDB = _postgres_bin("initdb")
PG_CTL = _postgres_bin("pg_ctl")


class PostgresCluster:
    """A throwaway PostgreSQL cluster: `create()`, then `start()`/`stop()` at will,
    `destroy()` at the end.

    initdb refuses to run as root, so as root the cluster belongs to the
    `postgres` user (its directory too, made under the system's temporary
    directory, which that user can reach, unlike pytest's per-test ones).
    """

    def __init__(self) -> None:
        assert INITDB is not None and PG_CTL is not None
        self.port = free_port()
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="integrations-pg-"))
        if self._owner is not None:
            os.chown(self.directory, self._owner.pw_uid, self._owner.pw_gid)
        self.data = self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._owner is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    def create(self) -> None:
        assert INITDB is not None
        self._run(
            INITDB, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        assert PG_CTL is not None
        # No Unix socket (TCP on loopback only); durability is not what is tested.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.directory / "server.log")
        self._run(PG_CTL, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session, as an operator's restart does."""
        assert PG_CTL is not None
        self._run(PG_CTL, "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
