"""Every query on `telegram_connections` (this domain owns the table).

The API's queries are scoped to a workspace (`ConnectionRepository`); the few
unscoped ones say why.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, or_, select, update
from sqlalchemy import Update as UpdateStatement
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.connections.models import (
    CONNECTIONS_TABLE,
    ConnectionMode,
    ConnectionStatus,
    TelegramConnection,
)
from app.pagination import PageParams, keyset

CONNECTIONS = CONNECTIONS_TABLE
# A live connection: one not deleted (deleted rows are kept for history).
LIVE = CONNECTIONS.c.deleted_at.is_(None)
# Lease bookkeeping, offsets and tidying are not edits of the connection: keep
# updated_at (whose onupdate would otherwise fire on every renewal) as it is.
_KEEP_UPDATED_AT = {"updated_at": CONNECTIONS.c.updated_at}


class ConnectionRepository:
    def __init__(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        self.session = session
        self.workspace_id = workspace_id

    def _live(self) -> Select[tuple[TelegramConnection]]:
        return select(TelegramConnection).where(
            TelegramConnection.workspace_id == self.workspace_id, LIVE
        )

    async def get(
        self, connection_id: uuid.UUID, *, for_update: bool = False
    ) -> TelegramConnection | None:
        stmt = self._live().where(TelegramConnection.id == connection_id)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def get_any(self, connection_id: uuid.UUID) -> TelegramConnection | None:
        """Live or deleted (a deleted connection says so rather than vanish)."""
        stmt = select(TelegramConnection).where(
            TelegramConnection.workspace_id == self.workspace_id,
            TelegramConnection.id == connection_id,
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list(self, params: PageParams) -> list[TelegramConnection]:
        stmt = keyset(
            self._live(),
            TelegramConnection.created_at,
            TelegramConnection.id,
            params,
            descending=True,
        )
        return list((await self.session.execute(stmt)).scalars())

    def add(self, connection: TelegramConnection) -> None:
        self.session.add(connection)


async def find_live_connection_by_bot(
    session: AsyncSession, bot_id: int
) -> TelegramConnection | None:
    """Unscoped on purpose: a bot may belong to one workspace only, whichever it is.

    Callers must never reveal anything of a row of another workspace.
    """
    stmt = select(TelegramConnection).where(TelegramConnection.bot_id == bot_id, LIVE)
    return (await session.execute(stmt)).scalar_one_or_none()


async def find_connection(
    session: AsyncSession, connection_id: uuid.UUID
) -> TelegramConnection | None:
    """Live or deleted, in any workspace: unscoped on purpose, for the operator's
    command line (`integrations verify --connection`), which has no workspace."""
    stmt = select(TelegramConnection).where(TelegramConnection.id == connection_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# -- Core statements for the webhook path and the worker ---------------------------
# The ingress directory and the pollers run outside any request, on Core
# connections of their own; their queries on this table live here all the same.


async def live_connection_exists(
    session: AsyncSession, workspace_id: uuid.UUID, connection_id: uuid.UUID
) -> bool:
    stmt = select(CONNECTIONS.c.id).where(
        CONNECTIONS.c.id == connection_id, CONNECTIONS.c.workspace_id == workspace_id, LIVE
    )
    return (await session.execute(stmt)).first() is not None


async def find_webhook_route(connection: AsyncConnection, key_hashes: list[str]) -> Row[Any] | None:
    """The live connection whose webhook key has one of `key_hashes` (unscoped: the
    key is the credential), with what the webhook path checks a request against."""
    stmt = select(
        CONNECTIONS.c.id,
        CONNECTIONS.c.workspace_id,
        CONNECTIONS.c.webhook_secret_hash,
        CONNECTIONS.c.previous_secret_hash,
        CONNECTIONS.c.previous_secret_expires_at,
    ).where(CONNECTIONS.c.webhook_key_hash.in_(key_hashes), LIVE)
    return (await connection.execute(stmt)).first()


async def clear_expired_previous_secrets(
    connection: AsyncConnection, now: datetime
) -> list[uuid.UUID]:
    """Forget the previous webhook secrets whose grace period ended; returns their ids.

    The webhook already refuses an expired previous secret; this removes the hash
    so that nothing outlives its purpose in the database.
    """
    stmt = (
        update(CONNECTIONS)
        .where(CONNECTIONS.c.previous_secret_expires_at < now)
        .values(previous_secret_hash=None, previous_secret_expires_at=None, **_KEEP_UPDATED_AT)
        .returning(CONNECTIONS.c.id)
    )
    return list((await connection.execute(stmt)).scalars())


class PollingLeases:
    """The long-polling lease, offset and status statements of one worker replica.

    One poller per bot across replicas: `poll_owner` and `poll_lease_until`, taken
    and renewed by conditional updates; every write a poller makes is fenced on
    still holding the lease of a live polling-mode connection (`held`).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner

    @staticmethod
    def pollable() -> ColumnElement[bool]:
        """A live polling-mode connection with a token: the only kind that is polled."""
        return and_(
            CONNECTIONS.c.mode == ConnectionMode.polling,
            LIVE,
            CONNECTIONS.c.bot_token.is_not(None),
        )

    def available(self, now: datetime) -> ColumnElement[bool]:
        """The lease is free, expired, or already this owner's."""
        return or_(
            CONNECTIONS.c.poll_owner.is_(None),
            CONNECTIONS.c.poll_owner == self.owner,
            CONNECTIONS.c.poll_lease_until.is_(None),
            CONNECTIONS.c.poll_lease_until < now,
        )

    def held(self, connection_id: uuid.UUID) -> ColumnElement[bool]:
        return and_(
            CONNECTIONS.c.id == connection_id,
            CONNECTIONS.c.poll_owner == self.owner,
            self.pollable(),
        )

    async def pollable_connections(
        self, connection: AsyncConnection, now: datetime
    ) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """(live polling-mode connections, those whose lease this owner may take)."""
        available = self.available(now).label("available")
        rows = (
            await connection.execute(select(CONNECTIONS.c.id, available).where(self.pollable()))
        ).all()
        return {row.id for row in rows}, {row.id for row in rows if row.available}

    async def renew(
        self, connection: AsyncConnection, connection_id: uuid.UUID, until: datetime, now: datetime
    ) -> Row[Any] | None:
        """Take or extend the lease; the row (workspace_id, bot_token, polling_offset),
        or None if another replica holds it or the connection is gone."""
        stmt = (
            update(CONNECTIONS)
            .where(CONNECTIONS.c.id == connection_id, self.pollable(), self.available(now))
            .values(poll_owner=self.owner, poll_lease_until=until, **_KEEP_UPDATED_AT)
            .returning(
                CONNECTIONS.c.workspace_id, CONNECTIONS.c.bot_token, CONNECTIONS.c.polling_offset
            )
        )
        return (await connection.execute(stmt)).one_or_none()

    async def release(self, connection: AsyncConnection, connection_id: uuid.UUID) -> None:
        stmt = (
            update(CONNECTIONS)
            .where(CONNECTIONS.c.id == connection_id, CONNECTIONS.c.poll_owner == self.owner)
            .values(poll_owner=None, poll_lease_until=None, **_KEEP_UPDATED_AT)
        )
        await connection.execute(stmt)

    def advance_offset(
        self, connection_id: uuid.UUID, offset: int, lease_until: datetime
    ) -> UpdateStatement:
        """The fenced offset move, run in the transaction that stores the batch."""
        return (
            update(CONNECTIONS)
            .where(self.held(connection_id))
            .values(polling_offset=offset, poll_lease_until=lease_until, **_KEEP_UPDATED_AT)
        )

    async def set_status(
        self,
        connection: AsyncConnection,
        connection_id: uuid.UUID,
        status: ConnectionStatus,
        hint: str | None,
        now: datetime,
    ) -> bool:
        """Write status and hint if they differ (no write per cycle); True if changed."""
        stmt = (
            update(CONNECTIONS)
            .where(
                self.held(connection_id),
                or_(
                    CONNECTIONS.c.status != status,
                    CONNECTIONS.c.status_hint.is_distinct_from(hint),
                ),
            )
            .values(status=status, status_hint=hint, updated_at=now)
        )
        return bool((await connection.execute(stmt)).rowcount)


# -- the outbound dispatcher's statements -------------------------------------------


def not_sending() -> Select[tuple[uuid.UUID]]:
    """Connections whose queue waits: deleted, or paused since Telegram rejected the token."""
    return select(CONNECTIONS.c.id).where(
        or_(CONNECTIONS.c.deleted_at.is_not(None), CONNECTIONS.c.outbound_paused_at.is_not(None))
    )


async def senders(connection: AsyncConnection, ids: set[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """What sending through these connections needs: workspace, sealed token, daily limit,
    and whether they may send now (live and not paused)."""
    stmt = select(
        CONNECTIONS.c.id,
        CONNECTIONS.c.workspace_id,
        CONNECTIONS.c.bot_token,
        CONNECTIONS.c.daily_limit,
        and_(LIVE, CONNECTIONS.c.outbound_paused_at.is_(None)).label("may_send"),
    ).where(CONNECTIONS.c.id.in_(list(ids)))
    return {row.id: row for row in await connection.execute(stmt)}


async def pause_outbound(
    connection: AsyncConnection, connection_id: uuid.UUID, hint: str, now: datetime
) -> None:
    """Telegram rejected the token on a send: the queue waits, the connection says why."""
    await connection.execute(
        update(CONNECTIONS)
        .where(CONNECTIONS.c.id == connection_id, CONNECTIONS.c.outbound_paused_at.is_(None))
        .values(
            outbound_paused_at=now,
            status=ConnectionStatus.action_required,
            status_hint=hint,
            updated_at=now,
        )
    )
