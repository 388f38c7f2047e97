"""Database engine, session factory, declarative base and the request session.

The same models run on PostgreSQL (asyncpg, production) and on a SQLite file
(aiosqlite, the embedded default). Portable column types live here so that
models never reach for a dialect-specific type.
"""

from __future__ import annotations

import enum
import functools
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, MetaData, String, Table, event, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

E = TypeVar("E", bound=enum.StrEnum)

# Deterministic constraint names, so migrations can refer to them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every dialect.

    SQLite has no time zones and hands back naive values; this type refuses naive
    input and always returns aware UTC, so comparisons never mix the two.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(TypeDecorator[E]):
    """A `StrEnum` column stored as its value (VARCHAR), read back as the enum member.

    Code writes and compares members, never `.value` strings; a value that is not
    a member is refused before any SQL is sent, and an unknown stored value fails
    loudly on read instead of travelling on as a bare string.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: E | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)

    @property
    def python_type(self) -> type[E]:
        return self.enum


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def pgbouncer_connect_args() -> dict[str, Any]:
    """asyncpg's arguments for a PgBouncer in transaction pooling mode.

    In transaction mode each transaction may run on another server connection, so
    a named prepared statement must never be relied on beyond the transaction that
    made it, and two client connections must never pick the same name on one
    server connection. asyncpg names statements `__asyncpg_stmt_<n>__`, counting
    per client connection, so two clients collide ("prepared statement ... already
    exists") and a cached statement goes missing ("... does not exist").

    - `statement_cache_size=0`: asyncpg keeps no statement between calls (and,
      knowing that, re-parses instead of trusting one across a Flush);
    - `prepared_statement_cache_size=0`: nor does SQLAlchemy's asyncpg adapter;
    - `prepared_statement_name_func`: the adapter still prepares each statement
      (to learn its result columns); a random name cannot collide with another
      client's statement left on the same server connection.
    """
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unique_statement_name,
    }


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def create_engine(
    url: str,
    *,
    application_name: str | None = None,
    pgbouncer: bool = False,
    pool_size: int = 10,
    max_overflow: int = 10,
    **kwargs: Any,
) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, foreign keys and a busy timeout.

    `application_name` names the process's connections in PostgreSQL's
    `pg_stat_activity` (which replica holds which locks, who is slow).
    `pgbouncer`: `url` leads to a PgBouncer in transaction pooling mode
    (`DATABASE_PGBOUNCER`, see `pgbouncer_connect_args`).
    `hide_parameters`: SQLAlchemy puts bound values into error messages, and a
    bound value may be a secret that never reached its sealed column.
    """
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    connect_args = kwargs.setdefault("connect_args", {})
    if application_name is not None:
        connect_args.setdefault("server_settings", {})["application_name"] = application_name
    if pgbouncer:
        connect_args.update(pgbouncer_connect_args())
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow, **kwargs)


# The webhook path's limits on waiting for a lock and on one statement (ms).
INGRESS_LOCK_TIMEOUT_MS = 5000
INGRESS_STATEMENT_TIMEOUT_MS = 10000


def create_ingress_engine(
    url: str,
    *,
    application_name: str | None = None,
    pgbouncer: bool = False,
    pool_size: int = 10,
) -> AsyncEngine:
    """The webhook path's own engine: a separate pool and short timeouts (PostgreSQL).

    The server-side timeouts are session settings sent at connect; PgBouncer
    accepts no such startup parameter (and a session `SET` would outlive the
    transaction on a shared server connection), so behind it each transaction sets
    them for itself (`set_config(..., true)`, one statement).
    """
    if url.startswith("sqlite"):
        return create_engine(url)
    timeouts = {
        "lock_timeout": str(INGRESS_LOCK_TIMEOUT_MS),
        "statement_timeout": str(INGRESS_STATEMENT_TIMEOUT_MS),
    }
    engine = create_engine(
        url,
        application_name=application_name,
        pgbouncer=pgbouncer,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        # No ping per checkout (a round trip per batch): a dead connection fails
        # its batch, which answers 503 and is redelivered, and the pool replaces it.
        pool_pre_ping=False,
        connect_args={
            "timeout": 5,
            "command_timeout": 10,
            "server_settings": {} if pgbouncer else dict(timeouts),
        },
    )
    if pgbouncer:

        @event.listens_for(engine.sync_engine, "begin")
        def _transaction_timeouts(connection: Connection) -> None:
            connection.exec_driver_sql(
                f"SELECT set_config('lock_timeout', '{INGRESS_LOCK_TIMEOUT_MS}', true),"
                f" set_config('statement_timeout', '{INGRESS_STATEMENT_TIMEOUT_MS}', true)"
            )

    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: committed when the caller is done, rolled back on error."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def checkpoint(session: AsyncSession) -> None:
    """Commit now, in the middle of a request: the one sanctioned early commit.

    The rule: a request's transaction ends when its handler returns (the session
    dependency commits it, before the response is sent). A service commits early
    only through this, and only where what it wrote must be durable and visible
    before it waits on something outside the database: a connection's claim on
    its bot before setWebhook (two workspaces racing must not both call
    Telegram), credentials before Telegram may use them, `last_used_at` before a
    request that may wait on Telegram (its row lock must not be held that long).
    """
    await session.commit()


async def insert_many(
    executor: AsyncSession | AsyncConnection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    skip_existing: bool = False,
) -> None:
    """Insert `rows` (dicts with the same keys, every column without a default
    given) in one statement; with `skip_existing`, rows whose key exists already
    are left out (ON CONFLICT DO NOTHING).

    On PostgreSQL one `INSERT ... SELECT FROM unnest(...)` with an array per column:
    the server runs one statement, not one per row as with executemany (which made
    a batch of a dispatcher's recorded sends cost PostgreSQL more than the sends
    cost the worker). Values go through their column type's own conversion
    (`UTCDateTime` refuses a naive time, as everywhere), and the arrays are of the
    unsized base types, so a value too long for its column is refused by the insert
    as a plain INSERT's would be, not cut short by the cast. Elsewhere (SQLite), the
    rows as executemany parameters.
    """
    if not rows:
        return
    names = tuple(rows[0])
    if any(len(row) != len(names) or any(name not in row for name in names) for row in rows):
        raise ValueError("insert_many: every row must name the same columns")
    bind = executor.bind if isinstance(executor, AsyncSession) else executor
    if bind.dialect.name != "postgresql":
        # The embedded default: SQLite.
        build = sqlite.insert(table).on_conflict_do_nothing() if skip_existing else insert(table)
        await executor.execute(build, list(rows))
        return
    statement, converters = _unnest_insert(bind.dialect, table, names, skip_existing)
    columns = []
    for name, convert in zip(names, converters, strict=True):
        values = [row[name] for row in rows]
        columns.append(values if convert is None else [convert(value) for value in values])
    await _execute_driver_sql(executor, statement, tuple(columns))


_Converter = Callable[[Any], Any] | None


# Per engine's dialect (a process has one or two; the tests make many, hence the bound).
@functools.lru_cache(maxsize=256)
def _unnest_insert(
    dialect: Dialect, table: Table, names: tuple[str, ...], skip_existing: bool
) -> tuple[str, list[_Converter]]:
    """The statement, and each column's own conversion of a Python value (None: the
    driver takes the value as it is)."""
    # Only the table's own column names get here (`table.c[name]` refuses others).
    columns = [table.c[name] for name in names]
    arrays = ", ".join(
        f"${n}::{_unsized(column.type.compile(dialect=dialect))}[]"
        for n, column in enumerate(columns, start=1)
    )
    quoted = ", ".join(f'"{column.name}"' for column in columns)
    statement = f'INSERT INTO "{table.name}" ({quoted}) SELECT * FROM unnest({arrays})'  # noqa: S608
    converters: list[_Converter] = [
        _bind_converter(column.type, dialect) if isinstance(column.type, TypeDecorator) else None
        for column in columns
    ]
    return statement + (" ON CONFLICT DO NOTHING" if skip_existing else ""), converters


def _unsized(sql_type: str) -> str:
    """VARCHAR(32) -> VARCHAR: an array cast to a sized type truncates silently."""
    return re.sub(r"\(.*\)", "", sql_type)


def _bind_converter(column_type: TypeDecorator[Any], dialect: Dialect) -> _Converter:
    def convert(value: Any) -> Any:
        return None if value is None else column_type.process_bind_param(value, dialect)

    return convert


async def _execute_driver_sql(
    executor: AsyncSession | AsyncConnection, statement: str, parameters: tuple[Any, ...]
) -> None:
    if isinstance(executor, AsyncSession):
        connection = await executor.connection()
        await connection.exec_driver_sql(statement, parameters)
    else:
        await executor.exec_driver_sql(statement, parameters)
