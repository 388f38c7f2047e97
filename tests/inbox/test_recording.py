"""What the inbox records of received updates: edits, renamed senders, the write cache."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.inbox.models import Contact, ConversationMessage
from tests.conftest import (
    WorkspaceFixture,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update


async def test_an_older_edit_never_replaces_a_newer_one(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    original = load_update("01_message")
    message = original["message"]

    def edit(update_offset: int, text_value: str, edit_date: int) -> dict[str, Any]:
        return {
            "update_id": original["update_id"] + update_offset,
            "edited_message": {**message, "text": text_value, "edit_date": edit_date},
        }

    newer, older = (
        edit(2, "edit two", message["date"] + 20),
        edit(1, "edit one", message["date"] + 10),
    )
    # Deliveries run in parallel: the newer edit and the original land together...
    results = await asyncio.gather(
        post_update(app_client, key, secret, newer),
        post_update(app_client, key, secret, original),
    )
    assert [r.status_code for r in results] == [200, 200]
    # ...and the older edit arrives last.
    assert (await post_update(app_client, key, secret, older)).status_code == 200
    async with db_session_factory() as session:
        (row,) = (await session.execute(select(ConversationMessage))).scalars().all()
    assert row.text == "edit two"


async def test_a_renamed_sender_is_updated_at_once_despite_the_write_cache(
    app_client: Any,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Unchanged contacts are not rewritten for a few seconds; changed ones always are."""

    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    sample = load_update("01_message")
    renamed_from = {**sample["message"]["from"], "username": "renamed_user"}
    second = {
        "update_id": sample["update_id"] + 1,
        "message": {**sample["message"], "message_id": 1, "from": renamed_from},
    }
    third = {**second, "update_id": sample["update_id"] + 2}
    for body in (sample, second, third):
        assert (await post_update(app_client, key, secret, body)).status_code == 200
    async with db_session_factory() as session:
        (contact,) = (await session.execute(select(Contact))).scalars().all()
        messages = (await session.execute(select(ConversationMessage))).scalars().all()
    assert contact.telegram_username == "renamed_user"
    assert {m.sender_contact_id for m in messages} == {contact.id}
    assert len(messages) == 2
