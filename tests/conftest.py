"""Test harness: real PostgreSQL and real Redis, never fakes.

- A fresh PostgreSQL database is created for the test run (from TEST_DATABASE_URL,
  default the local server), migrated once with alembic, and dropped at the end.
- Each test starts from empty tables (truncated after every test) and an empty
  Redis database (TEST_REDIS_URL, default index 14 of the local server, flushed).
- The application runs in-process through httpx's ASGI transport, with its real
  lifespan (engine, Redis client, HTTP client).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.auth.service import create_workspace
from app.auth.tokens import generate_api_token, hash_api_token
from app.config import Settings
from app.db import create_engine, create_session_factory, session_scope
from app.logging import configure_logging
from app.main import create_app
from app.migrate import upgrade_to_head
from app.models import metadata
from tests.leaks import registry as leaks
from tests.leaks.capture import install_log_capture
from tests.leaks.dump import dump_database
from tests.logging_state import LoggingState
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import stop_shared_double, telegram_double

__all__ = ["telegram_double"]

# The session-wide secret-leak check (tests/leaks/plugin.py).
pytest_plugins = ["tests.leaks.plugin"]

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def _redis_url_of_this_process(base: str) -> str:
    """Each pytest-xdist worker process flushes a Redis database of its own: the base
    URL's (default 14) for the first, and one below the next free index for each
    other (12, 11, ...: 13 and 15 are the benches' and the rate-limit tests')."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    number = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    if number == 0:
        return base
    url = make_url(base)
    index = int(url.database or 0) - number
    if index <= 13 < index + number:
        index -= 1
    if index < 0:
        raise RuntimeError(
            f"TEST_REDIS_URL's database index is too low for test process {worker}: "
            "use a higher index, or fewer processes (TEST_WORKERS)"
        )
    return url.set(database=str(index)).render_as_string(hide_password=False)


TEST_REDIS_URL = _redis_url_of_this_process(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
)
TEST_VAULT_KEYS = "test1:" + "A" * 42 + "Q"  # 32 zero-ish bytes; a fixed key for tests only
PUBLIC_BASE_URL = "https://integrations.example.com"


EMPTY_EVERY_TABLE = "; ".join(f'DELETE FROM "{t.name}"' for t in reversed(metadata.sorted_tables))


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared_double()


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging(json_output=False, level="DEBUG")
    install_log_capture()


@pytest.fixture(autouse=True)
def _isolated_logging(_logging: None) -> Iterator[None]:
    """Whatever a test does to the logging configuration is undone after it, so
    no test's outcome depends on which tests ran before it."""
    state = LoggingState.capture()
    yield
    state.restore()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A new, migrated PostgreSQL database for this test run."""
    admin_url = make_url(TEST_DATABASE_URL)
    name = f"integrations_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(TEST_DATABASE_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    # alembic's env.py runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(upgrade_to_head, url)
    try:
        yield url
    finally:
        await dump_for_leak_check(url)
        admin = await asyncpg.connect(_asyncpg_dsn(TEST_DATABASE_URL))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def dump_for_leak_check(url: str) -> None:
    """Add every row of the database at `url` to the leak check's evidence."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            leaks.add_text("db-dump", await dump_database(connection))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db_session_factory(
    db_engine: AsyncEngine,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the test database; every table is emptied after the test."""
    yield create_session_factory(db_engine)
    async with db_engine.begin() as connection:
        # What the test stored is searched for secrets at the end of the session.
        leaks.add_text("db-dump", await dump_database(connection))
        # DELETE, children first, in one round trip: a test leaves a few rows, and
        # TRUNCATE (new files for every table and index) costs 30-40 ms a test.
        # No table has a sequence to restart.
        raw = await connection.get_raw_connection()
        await raw.driver_connection.execute(EMPTY_EVERY_TABLE)


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "redis_url": TEST_REDIS_URL,
        "vault_keys": TEST_VAULT_KEYS,
        "public_base_url": PUBLIC_BASE_URL,
        "telegram_api_base": "http://127.0.0.1:9",
        "data_dir": tmp_path / "data",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, telegram_double: TelegramDouble) -> Settings:
    return make_settings(tmp_path, database_url, telegram_api_base=telegram_double.base_url)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, client_address: str = "203.0.113.10"
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The application with its real lifespan, and an HTTP client speaking to it
    from `client_address` (what the app sees as the peer)."""
    app = create_app(settings, configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


@pytest.fixture
async def app_client(
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as (_app, client):
        yield client


@dataclass
class WorkspaceFixture:
    """A workspace with an admin token, and a way to mint tokens of other roles."""

    id: uuid.UUID
    admin_token: str
    session_factory: async_sessionmaker[AsyncSession]

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    async def token(self, role: Role, name: str = "test") -> tuple[uuid.UUID, str]:
        from app.auth.models import ApiToken

        secret = generate_api_token()
        leaks.record("api_token", secret)
        async for session in session_scope(self.session_factory):
            row = ApiToken(
                workspace_id=self.id, name=name, role=role, token_hash=hash_api_token(secret)
            )
            session.add(row)
            await session.flush()
            token_id = row.id
        return token_id, secret


async def new_workspace(
    session_factory: async_sessionmaker[AsyncSession], name: str = "Acme"
) -> WorkspaceFixture:
    async for session in session_scope(session_factory):
        workspace, token = await create_workspace(session, name)
    leaks.record("api_token", token)
    return WorkspaceFixture(id=workspace.id, admin_token=token, session_factory=session_factory)


@pytest.fixture
async def workspace(db_session_factory: async_sessionmaker[AsyncSession]) -> WorkspaceFixture:
    return await new_workspace(db_session_factory, "Acme")


@pytest.fixture
async def other_workspace(
    db_session_factory: async_sessionmaker[AsyncSession],
) -> WorkspaceFixture:
    return await new_workspace(db_session_factory, "Globex")


@pytest.fixture
def unused_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


@dataclass
class BackendApp:
    """The application on one backend, with a workspace of its own."""

    backend: str
    client: httpx.AsyncClient
    workspace: WorkspaceFixture
    engine: AsyncEngine


@pytest.fixture(params=["postgresql", "sqlite"])
async def backend_app(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    settings: Settings,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> AsyncIterator[BackendApp]:
    """The application on PostgreSQL, and again on the embedded default (a SQLite
    file, the in-process limiter): what runs on both backends is tested on both."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"
        await asyncio.to_thread(upgrade_to_head, url)
        settings = settings.model_copy(update={"database_url": url, "redis_url": None})
    async with running_app(settings) as (app, client):
        workspace = await new_workspace(app.state.runtime.session_factory)
        yield BackendApp(request.param, client, workspace, app.state.runtime.engine)
