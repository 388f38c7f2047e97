"""`app.db.insert_many` on both backends: one statement for many rows, and the rows
that exist already left out when asked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.models import Workspace
from app.db import create_engine, insert_many
from app.migrate import upgrade_to_head

WORKSPACES: Table = Workspace.__table__  # type: ignore[assignment]


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    db_engine: AsyncEngine,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncEngine]:
    if request.param == "postgresql":
        yield db_engine  # emptied after the test by db_session_factory
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    embedded = create_engine(url)
    yield embedded
    await embedded.dispose()


def workspace(name: str, at: datetime) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "name": name, "created_at": at}


async def stored(engine: AsyncEngine) -> dict[uuid.UUID, tuple[str, datetime]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(WORKSPACES))
        return {row.id: (row.name, row.created_at) for row in rows}


async def test_many_rows_are_inserted_as_given(engine: AsyncEngine) -> None:
    at = datetime(2026, 12, 7, 10, 30, 15, 123456, tzinfo=UTC)
    rows = [workspace(f'O\'Brien {n} "& Co"', at + timedelta(seconds=n)) for n in range(300)]
    async with engine.begin() as connection:
        await insert_many(connection, WORKSPACES, rows)
    assert await stored(engine) == {row["id"]: (row["name"], row["created_at"]) for row in rows}


async def test_existing_rows_are_left_out_when_asked_and_refused_otherwise(
    engine: AsyncEngine,
) -> None:
    at = datetime.now(UTC)
    first = [workspace("a", at), workspace("b", at)]
    async with engine.begin() as connection:
        await insert_many(connection, WORKSPACES, first)
    again = {**first[0], "name": "a again"}
    new = workspace("c", at)
    async with engine.begin() as connection:
        await insert_many(connection, WORKSPACES, [again, new], skip_existing=True)
    assert {name for name, _ in (await stored(engine)).values()} == {"a", "b", "c"}
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await insert_many(connection, WORKSPACES, [again])


async def test_nothing_to_insert_is_no_statement(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await insert_many(connection, WORKSPACES, [])
    assert await stored(engine) == {}


async def test_a_value_too_long_for_its_column_is_refused_not_cut_short(
    engine: AsyncEngine,
) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    with pytest.raises(DBAPIError):
        async with engine.begin() as connection:
            await insert_many(connection, WORKSPACES, [workspace("x" * 201, datetime.now(UTC))])
    assert await stored(engine) == {}


async def test_a_naive_time_is_refused_as_by_the_column_type(engine: AsyncEngine) -> None:
    with pytest.raises((ValueError, StatementError)):
        async with engine.begin() as connection:
            await insert_many(connection, WORKSPACES, [workspace("naive", datetime(2026, 1, 1))])
    assert await stored(engine) == {}


async def test_rows_naming_different_columns_are_refused(engine: AsyncEngine) -> None:
    at = datetime.now(UTC)
    with pytest.raises(ValueError, match="same columns"):
        async with engine.begin() as connection:
            await insert_many(
                connection, WORKSPACES, [workspace("a", at), {"id": uuid.uuid4(), "name": "b"}]
            )
