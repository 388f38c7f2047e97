"""Throwaway infrastructure the operations tests start themselves, never the shared one.

- `RedisClusterProcesses`: three `redis-server` primaries (cluster-enabled) on free
  ports in 17000-17010, joined by `redis-cli --cluster create`.
- `PgBouncerProcess`: a `pgbouncer` in transaction pooling mode on a free port, in
  front of the local PostgreSQL (127.0.0.1:5432), any user allowed (as `postgres`).

Both are installed by `.ci/run`; a machine without them fails here with a message
saying what to install, rather than skipping what the service promises.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_sync

from tests.ratelimit._support import free_port

CLUSTER_PORTS = range(17000, 17011)
# A cluster node's bus listens on its port + 10000.
CLUSTER_BUS_OFFSET = 10000
# Only a give-up limit for a process that never comes up; every wait below
# returns as soon as its condition holds.
START_LIMIT = 30.0


def require(program: str, package: str) -> str:
    # pgbouncer lives in /usr/sbin, which a non-root PATH may lack.
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(
            f"{program} is not installed: apt-get install -y {package} (.ci/run installs it)"
        )
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + START_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RedisClusterProcesses:
    """Three primaries, no replicas: every slot is served, by three processes."""

    def __init__(self, directory: Path, primaries: int = 3) -> None:
        self.directory = directory
        self.primaries = primaries
        self.ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """One node's URL: what `REDIS_URL` names with `REDIS_CLUSTER=true`."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        server = require("redis-server", "redis-server")
        cli = require("redis-cli", "redis-tools")
        self.ports = self._choose_ports()
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self._processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--logfile",
                        str(node_dir / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            _wait(lambda port=port: self._answers(port), f"redis-server on port {port}")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=START_LIMIT,
        )
        for port in self.ports:
            _wait(lambda port=port: self._cluster_ok(port), f"cluster state ok on {port}")

    def stop(self) -> None:
        for process in self._processes:
            process.kill()
            process.wait()
        self._processes.clear()

    def _choose_ports(self) -> list[int]:
        ports = [
            port
            for port in CLUSTER_PORTS
            if _port_free(port) and _port_free(port + CLUSTER_BUS_OFFSET)
        ]
        if len(ports) < self.primaries:
            raise RuntimeError(f"fewer than {self.primaries} free ports in 17000-17010")
        return ports[: self.primaries]

    @staticmethod
    def _answers(port: int) -> bool:
        client = redis_sync.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis_sync.ConnectionError:
            return False
        finally:
            client.close()

    @staticmethod
    def _cluster_ok(port: int) -> bool:
        client = redis_sync.Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text
        finally:
            client.close()


class PgBouncerProcess:
    """`pgbouncer` in transaction mode before 127.0.0.1:5432; every database is
    reached as `postgres` (the local trust setup)."""

    def __init__(self, *, pool_size: int = 2) -> None:
        self.pool_size = pool_size
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        program = require("pgbouncer", "pgbouncer")
        self.port = free_port()
        # PgBouncer refuses to run as root; as root it is started as `postgres`, who
        # must be able to read its configuration and write its log.
        as_root = os.geteuid() == 0
        directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self._directory = directory
        config = directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            "* = host=127.0.0.1 port=5432 user=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            # What the README recommends: the statements a transaction prepared go
            # when it ends, so none pile up on the shared server connections.
            "server_reset_query = DEALLOCATE ALL\n"
            "server_reset_query_always = 1\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {directory / 'pgbouncer.log'}\n"
        )
        command = [program, str(config)]
        if as_root:
            directory.chmod(0o755)
            config.chmod(0o644)
            shutil.chown(directory, "postgres")
            command = [program, "-u", "postgres", str(config)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(self._listening, f"pgbouncer on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _listening(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {self._process.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0
