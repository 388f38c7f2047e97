"""Counting what ingress stored, straight from the database."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress.models import TelegramUpdate


async def stored_counts(factory: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with factory() as session:
        counts = {}
        for name, model in (
            ("updates", TelegramUpdate),
            ("contacts", Contact),
            ("conversations", Conversation),
            ("messages", ConversationMessage),
        ):
            counts[name] = (
                await session.execute(select(func.count()).select_from(model))
            ).scalar_one()
    return counts


async def stored_update_ids(factory: async_sessionmaker[AsyncSession]) -> list[int]:
    async with factory() as session:
        rows = await session.execute(
            select(TelegramUpdate.update_id).order_by(TelegramUpdate.update_id)
        )
        return list(rows.scalars())
