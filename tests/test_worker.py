"""The worker's housekeeping (its pollers are tested in tests/ingress/test_polling.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import utcnow
from tests.conftest import WorkspaceFixture
from tests.ingress.test_polling import (
    connect_polling_bots,
    connection_row,
    polling_settings,
    running_worker,
    set_columns,
)
from tests.telegram_double.double import TelegramDouble
from tests.waiting import eventually

__all__ = ["polling_settings"]


async def test_expired_previous_webhook_secrets_are_cleared_and_current_ones_kept(
    polling_settings: Settings,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    (_, expired_id), (_, current_id) = await connect_polling_bots(
        polling_settings, workspace, telegram_double, count=2
    )
    now = utcnow()
    await set_columns(
        db_session_factory,
        expired_id,
        previous_secret_hash="h" * 64,
        previous_secret_expires_at=now - timedelta(seconds=1),
    )
    await set_columns(
        db_session_factory,
        current_id,
        previous_secret_hash="k" * 64,
        previous_secret_expires_at=now + timedelta(minutes=10),
    )

    async def cleared() -> bool:
        row = await connection_row(db_session_factory, expired_id)
        return row.previous_secret_hash is None and row.previous_secret_expires_at is None

    async with running_worker(polling_settings):
        await eventually(cleared, "the expired previous secret to be cleared")
    current = await connection_row(db_session_factory, current_id)
    assert current.previous_secret_hash == "k" * 64
    assert current.previous_secret_expires_at is not None
