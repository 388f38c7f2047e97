"""PostgreSQL through PgBouncer in transaction pooling mode (`DATABASE_PGBOUNCER=true`).

A pgbouncer of the tests' own (Debian's package; tests/infra/services.py) with two
server connections per database, so client connections share them, as they do
in production. Its database is migrated through PgBouncer; the service then runs
on it end to end. The same traffic with the setting off fails on prepared
statements, so these tests show the setting is what makes it work.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import structlog
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import create_engine, create_ingress_engine, create_session_factory
from app.migrate import upgrade_to_head
from app.models import metadata
from tests.conftest import (
    TEST_DATABASE_URL,
    WorkspaceFixture,
    make_settings,
    new_workspace,
    running_app,
)
from tests.connections.helpers import webhook_credentials
from tests.infra.services import PgBouncerProcess
from tests.ingress.test_polling import running_worker
from tests.ingress.test_webhook import post_update
from tests.messages.test_dispatcher import connect, reaches, request
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update

# A PgBouncer of its own, under concurrent load: run alone (see pyproject markers).
pytestmark = pytest.mark.exclusive

# More at once than PgBouncer has server connections: clients must share them.
CONCURRENT = 12
ROUNDS = 3


def _admin_dsn() -> str:
    return make_url(TEST_DATABASE_URL).set(drivername="postgresql").render_as_string(False)


@pytest.fixture(scope="session")
async def bouncer_database_url(pgbouncer: PgBouncerProcess) -> AsyncIterator[str]:
    """A new database, migrated through PgBouncer; its URL through PgBouncer."""
    name = f"integrations_pgbouncer_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = pgbouncer.url(name)
    try:
        # alembic's env.py runs its own event loop: give it a thread of its own.
        await asyncio.to_thread(upgrade_to_head, url, pgbouncer=True)
        yield url
    finally:
        admin = await asyncpg.connect(_admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def bouncer_engine(bouncer_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(bouncer_database_url, pgbouncer=True)
    yield engine
    await engine.dispose()


@pytest.fixture
async def bouncer_workspace(bouncer_engine: AsyncEngine) -> WorkspaceFixture:
    return await new_workspace(create_session_factory(bouncer_engine), f"W-{uuid.uuid4().hex[:6]}")


def bouncer_settings(
    tmp_path: Path, url: str, double: TelegramDouble, *, pgbouncer: bool
) -> Settings:
    return make_settings(
        tmp_path, url, database_pgbouncer=pgbouncer, telegram_api_base=double.base_url
    )


async def concurrent_reads(client: httpx.AsyncClient, workspace: WorkspaceFixture) -> list[int]:
    """Status codes of ROUNDS rounds of CONCURRENT authenticated API reads at once.

    A client connection's first round prepares its statements on whichever server
    connection it got; later rounds land on others.
    """
    statuses = []
    for _ in range(ROUNDS):
        responses = await asyncio.gather(
            *(
                client.get("/api/v1/connections", headers=workspace.headers())
                for _ in range(CONCURRENT)
            )
        )
        statuses += [response.status_code for response in responses]
    return statuses


async def test_migrations_apply_through_pgbouncer(bouncer_engine: AsyncEngine) -> None:
    async with bouncer_engine.connect() as connection:
        version = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
        tables = set(
            (
                await connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
        )
    assert len(version) == 1
    assert {table.name for table in metadata.sorted_tables} <= tables


async def test_the_service_works_through_pgbouncer_with_the_setting(
    tmp_path: Path,
    bouncer_database_url: str,
    bouncer_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Redis,
) -> None:
    """Connect a bot, receive a webhook update, send a message through the queue
    (the worker's dispatcher), and many requests at once: all through PgBouncer."""
    settings = bouncer_settings(tmp_path, bouncer_database_url, telegram_double, pgbouncer=True)
    workspace = bouncer_workspace
    base = load_update("01_message")
    async with running_app(settings) as (_app, client):
        bot, connection_id = await connect(client, workspace, telegram_double)
        updates = [{**base, "update_id": base["update_id"] + n} for n in range(CONCURRENT)]
        key, secret = webhook_credentials(telegram_double, bot)
        delivered = await asyncio.gather(
            *(post_update(client, key, secret, update) for update in updates)
        )
        assert [r.status_code for r in delivered] == [200] * CONCURRENT
        events = await client.get(
            f"/api/v1/connections/{connection_id}/events",
            params={"limit": 100},
            headers=workspace.headers(),
        )
        assert events.status_code == 200
        assert sorted(e["update_id"] for e in events.json()["items"]) == sorted(
            u["update_id"] for u in updates
        )
        assert await concurrent_reads(client, workspace) == [200] * CONCURRENT * ROUNDS

        message = await request(client, workspace, connection_id, chat_id=501, text="hi")
        async with running_worker(settings):
            sent = await reaches(client, workspace, message["id"], "sent")
    [record] = telegram_double.sent_messages(bot)
    assert record.text == "hi" and sent["telegram_message_id"] == record.message_id


async def test_without_the_setting_requests_fail_on_prepared_statements(
    tmp_path: Path,
    bouncer_database_url: str,
    bouncer_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    redis_client: Redis,
) -> None:
    """The control: the same PgBouncer, DATABASE_PGBOUNCER=false. asyncpg's
    numbered statement names collide on shared server connections."""
    settings = bouncer_settings(tmp_path, bouncer_database_url, telegram_double, pgbouncer=False)
    with structlog.testing.capture_logs() as logs:
        async with running_app(settings) as (_app, client):
            statuses = await concurrent_reads(client, bouncer_workspace)
    assert 500 in statuses
    failures = [entry["exc_info"] for entry in logs if entry["event"] == "unhandled_error"]
    assert failures and all("prepared statement" in str(exc) for exc in failures)


@pytest.mark.parametrize("factory", [create_engine, create_ingress_engine])
async def test_each_engine_shares_pgbouncers_connections_only_with_the_setting(
    bouncer_database_url: str, factory: object
) -> None:
    """Both of the service's engines, at once on few server connections: with the
    setting every transaction succeeds (the webhook path's keeps its timeouts);
    without it, prepared statements collide (or, for the webhook path, PgBouncer
    refuses its timeouts as startup parameters)."""
    assert callable(factory)

    async def transactions(engine: AsyncEngine) -> list[object]:
        async def one(n: int) -> object:
            async with engine.connect() as connection:
                row = (
                    await connection.execute(
                        text("SELECT CAST(:n AS integer), current_setting('lock_timeout')"),
                        {"n": n},
                    )
                ).one()
                await connection.commit()
                return tuple(row)

        results: list[object] = []
        for _ in range(ROUNDS):
            results += await asyncio.gather(
                *(one(n) for n in range(CONCURRENT)), return_exceptions=True
            )
        return results

    pooled = factory(bouncer_database_url, application_name="infra-test", pgbouncer=True)
    try:
        results = await transactions(pooled)
    finally:
        await pooled.dispose()
    lock_timeout = "5s" if factory is create_ingress_engine else "0"
    assert results == [(n, lock_timeout) for n in range(CONCURRENT)] * ROUNDS

    plain = factory(bouncer_database_url, application_name="infra-test", pgbouncer=False)
    try:
        failed = [r for r in await transactions(plain) if isinstance(r, BaseException)]
    finally:
        await plain.dispose()
    assert failed
    expected = (
        "unsupported startup parameter"
        if factory is create_ingress_engine
        else ("prepared statement")
    )
    assert all(expected in str(exc) for exc in failed)


async def test_prepared_statements_do_not_pile_up_on_server_connections(
    bouncer_engine: AsyncEngine,
) -> None:
    """Each statement gets a name of its own, so every one left behind would stay on
    its server connection; PgBouncer's reset (`DEALLOCATE ALL` after each
    transaction, as the README recommends) clears them."""

    async def one(n: int) -> int:
        async with bouncer_engine.connect() as connection:
            await connection.execute(text("SELECT CAST(:n AS integer)"), {"n": n})
            left = (
                await connection.execute(text("SELECT count(*) FROM pg_prepared_statements"))
            ).scalar_one()
            await connection.commit()
            return int(left)

    for _ in range(ROUNDS):
        counts = await asyncio.gather(*(one(n) for n in range(CONCURRENT)))
        # At most this transaction's own two statements, nothing from earlier ones.
        assert max(counts) <= 2
