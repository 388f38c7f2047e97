"""The statement that stores updates, per dialect (the inbox's are in `app.inbox.statements`).

`PostgresStatements` sends fixed SQL with one array per column (`unnest`), so the
text never changes with the batch size: PostgreSQL parses and plans each once per
connection (asyncpg's prepared statement cache), and SQLAlchemy compiles nothing
per batch. `PortableStatements` (the embedded SQLite default) builds the same
upserts with SQLAlchemy's dialect `insert`; its volume is a laptop's.

Both take rows as dicts keyed by column name; `insert_updates` returns the
(connection, update_id) pairs actually inserted.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.ingress.models import TelegramUpdate

UPDATES: Table = TelegramUpdate.__table__  # type: ignore[assignment]

UpdateKey = tuple[uuid.UUID, int]


class Statements(Protocol):
    async def insert_updates(self, rows: list[dict[str, Any]]) -> set[UpdateKey]: ...


def statements_for(connection: AsyncConnection) -> Statements:
    if connection.dialect.name == "postgresql":
        return PostgresStatements(connection)
    return PortableStatements(connection)


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> tuple[list[Any], ...]:
    return tuple([row[name] for row in rows] for name in names)


# -- PostgreSQL: fixed text, arrays through unnest ------------------------------------

_UPDATE_COLUMNS = (
    "id",
    "workspace_id",
    "connection_id",
    "update_id",
    "kind",
    "source",
    "payload",
    "received_at",
)
_INSERT_UPDATES = """
INSERT INTO telegram_updates
    (id, workspace_id, connection_id, update_id, kind, source, payload, received_at)
SELECT * FROM unnest(
    $1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::varchar[], $6::varchar[],
    $7::text[], $8::timestamptz[])
ON CONFLICT (connection_id, update_id) DO NOTHING
RETURNING connection_id, update_id
"""


class PostgresStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def _run(self, sql: str, rows: list[dict[str, Any]], names: tuple[str, ...]) -> Any:
        return await self._connection.exec_driver_sql(sql, _columns(rows, names))

    async def insert_updates(self, rows: list[dict[str, Any]]) -> set[UpdateKey]:
        result = await self._run(_INSERT_UPDATES, rows, _UPDATE_COLUMNS)
        return {(row[0], row[1]) for row in result}


# -- Portable (SQLite): SQLAlchemy's dialect insert ----------------------------------


class PortableStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def insert_updates(self, rows: list[dict[str, Any]]) -> set[UpdateKey]:
        stmt = (
            sqlite.insert(UPDATES)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["connection_id", "update_id"])
            .returning(UPDATES.c.connection_id, UPDATES.c.update_id)
        )
        return {(row.connection_id, row.update_id) for row in await self._connection.execute(stmt)}
