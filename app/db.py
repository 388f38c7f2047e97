"""Database engine, session factory, declarative base and the request session.

The same models run on PostgreSQL (asyncpg, production) and on a SQLite file
(aiosqlite, the embedded default). Portable column types live here so that
models never reach for a dialect-specific type.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, MetaData, String, event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
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


def create_engine(
    url: str,
    *,
    application_name: str | None = None,
    pool_size: int = 10,
    max_overflow: int = 10,
    **kwargs: Any,
) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, foreign keys and a busy timeout.

    `application_name` names the process's connections in PostgreSQL's
    `pg_stat_activity` (which replica holds which locks, who is slow).
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
    if application_name is not None:
        connect_args = kwargs.setdefault("connect_args", {})
        connect_args.setdefault("server_settings", {})["application_name"] = application_name
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow, **kwargs)


def create_ingress_engine(
    url: str, *, application_name: str | None = None, pool_size: int = 10
) -> AsyncEngine:
    """The webhook path's own engine: a separate pool and short timeouts (PostgreSQL)."""
    if url.startswith("sqlite"):
        return create_engine(url)
    return create_engine(
        url,
        application_name=application_name,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        # No ping per checkout (a round trip per batch): a dead connection fails
        # its batch, which answers 503 and is redelivered, and the pool replaces it.
        pool_pre_ping=False,
        connect_args={
            "timeout": 5,
            "command_timeout": 10,
            "server_settings": {"lock_timeout": "5000", "statement_timeout": "10000"},
        },
    )


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
