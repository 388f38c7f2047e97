"""The statements that store updates, per dialect (the inbox's are in `app.inbox.statements`).

`PostgresStatements` sends fixed SQL with one array per column (`unnest`), so the
text never changes with the batch size: PostgreSQL parses and plans each once per
connection (asyncpg's prepared statement cache), and SQLAlchemy compiles nothing
per batch. `PortableStatements` (the embedded SQLite default) builds the same
inserts with SQLAlchemy's dialect `insert`; its volume is a laptop's.

`store` writes a batch of updates and their inbox records; on PostgreSQL that is
one statement, composed here from the update insert and the inbox's CTE
fragments:

    WITH new_updates AS (INSERT INTO telegram_updates ... ON CONFLICT DO NOTHING
                         RETURNING connection_id, update_id),
         contacts_written AS (...), conversations_written AS (...),
         messages_written AS (...)            -- app.inbox.statements.inbound_ctes
    SELECT connection_id, update_id FROM new_updates

The fragments read `new_updates` (only the updates inserted now), so a duplicate's
records are never written, and nothing is written unless all of it is: a single
statement is atomic without a transaction around it, which saves the BEGIN and
COMMIT round trips (the group commit runs it outside any transaction; inside a
caller's transaction it is one statement of that transaction).

Rows are dicts keyed by column name; both return the (connection, update_id) pairs
actually inserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.inbox.recording import InboundRecords, UpdateKey, record_inbound
from app.inbox.statements import inbound_arguments, inbound_ctes
from app.ingress.models import TelegramUpdate

UPDATES: Table = TelegramUpdate.__table__  # type: ignore[assignment]

__all__ = ["PortableStatements", "PostgresStatements", "Statements", "UpdateKey", "statements_for"]


class Statements(Protocol):
    async def insert_updates(self, rows: list[dict[str, Any]]) -> set[UpdateKey]:
        """The updates alone (no inbox records)."""
        ...

    async def store(self, rows: list[dict[str, Any]], records: InboundRecords) -> set[UpdateKey]:
        """The updates, and the inbox records of those that are new."""
        ...


def statements_for(connection: AsyncConnection) -> Statements:
    if connection.dialect.name == "postgresql":
        return PostgresStatements(connection)
    return PortableStatements(connection)


# -- PostgreSQL: fixed text, arrays through unnest ------------------------------------

# Without `id`: PostgreSQL draws it (gen_random_uuid, as random as uuid4), which
# spares the process a uuid4() and an encoded UUID per update; on SQLite the
# model's default does.
_UPDATE_COLUMNS = (
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
SELECT gen_random_uuid(), * FROM unnest(
    $1::uuid[], $2::uuid[], $3::bigint[], $4::varchar[], $5::varchar[], $6::text[],
    $7::timestamptz[])
ON CONFLICT (connection_id, update_id) DO NOTHING
RETURNING connection_id, update_id
"""
_STORE = f"""
WITH new_updates AS ({_INSERT_UPDATES}),
{inbound_ctes("new_updates", first=len(_UPDATE_COLUMNS) + 1)}
SELECT connection_id, update_id FROM new_updates
"""  # noqa: S608 (constants only)


def _columns(rows: list[dict[str, Any]]) -> tuple[list[Any], ...]:
    return tuple([row[name] for row in rows] for name in _UPDATE_COLUMNS)


class PostgresStatements:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def insert_updates(self, rows: list[dict[str, Any]]) -> set[UpdateKey]:
        return _keys(await self._fetch(_INSERT_UPDATES, _columns(rows)))

    async def store(self, rows: list[dict[str, Any]], records: InboundRecords) -> set[UpdateKey]:
        return _keys(await self._fetch(_STORE, (*_columns(rows), *inbound_arguments(records))))

    async def _fetch(self, sql: str, arguments: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        if self._connection.in_transaction():
            return list(await self._connection.exec_driver_sql(sql, arguments))
        # Outside a transaction (the group commit) the statement is its own
        # transaction, so it goes straight to the driver: no BEGIN or COMMIT, and
        # none of SQLAlchemy's per-call work (greenlet, cursor), which costs more
        # than building the batch. asyncpg's own cache prepares it once per
        # connection. SQLAlchemy does not see the call, so a connection that
        # broke is invalidated here, or the pool would hand it out again.
        driver = (await self._connection.get_raw_connection()).driver_connection
        assert driver is not None  # a checked-out connection has its driver's
        try:
            rows: Sequence[Sequence[Any]] = await driver.fetch(sql, *arguments)
        except BaseException:
            if driver.is_closed():
                await self._connection.invalidate()
            raise
        return rows


def _keys(rows: Sequence[Sequence[Any]]) -> set[UpdateKey]:
    return {(row[0], row[1]) for row in rows}


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

    async def store(self, rows: list[dict[str, Any]], records: InboundRecords) -> set[UpdateKey]:
        # Two statements: the caller's transaction makes them one.
        inserted = await self.insert_updates(rows)
        if inserted:
            await record_inbound(self._connection, records, inserted)
        return inserted
