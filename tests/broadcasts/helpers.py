"""What the broadcast tests share: recipients in the inbox, the API calls, and
dispatchers to send with."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from redis.asyncio import Redis
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db import utcnow
from app.inbox.models import Contact, Conversation
from app.inbox.recording import contact_id, conversation_for_chat
from app.messages.dispatcher import Dispatcher, DispatchSettings
from app.messages.pacing import PacingLimits, RedisOutboundPacer
from app.telegram.client import TelegramClient
from app.telegram.conversation_keys import ConversationKey
from tests.conftest import WorkspaceFixture
from tests.connections.helpers import connect_bot
from tests.messages.test_dispatcher import FAST, new_dispatcher
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot

BROADCASTS = "/api/v1/broadcasts"


@dataclass(frozen=True)
class Recipients:
    """Users who wrote to a bot: their chats, contacts and private conversations."""

    chat_ids: list[int]
    contact_ids: list[str]
    conversation_ids: list[str]


async def seed_recipients(
    session_factory: async_sessionmaker[AsyncSession],
    workspace: WorkspaceFixture,
    connection_id: str,
    chat_ids: Sequence[int],
) -> Recipients:
    """Contacts and their private conversations, as ingress records them (the same
    derived ids), written directly: a thousand users need not each send an update."""
    connection = uuid.UUID(connection_id)
    now = utcnow()
    contacts = [
        {
            "id": contact_id(connection, chat),
            "workspace_id": workspace.id,
            "connection_id": connection,
            "telegram_chat_id": chat,
            "telegram_username": None,
            "first_name": f"User {chat}",
            "last_name": None,
            "title": None,
            "is_bot": False,
            "is_chat": False,
            "created_at": now,
            "last_seen_at": now,
        }
        for chat in chat_ids
    ]
    conversations = [
        {
            "id": conversation_for_chat(connection, chat),
            "workspace_id": workspace.id,
            "connection_id": connection,
            "key": ConversationKey(chat_id=chat).encode(),
            "chat_id": chat,
            "chat_type": "private",
            "title": None,
            "business_connection_id": None,
            "thread_id": None,
            "direct_messages_topic_id": None,
            "created_at": now,
            "last_activity_at": now,
        }
        for chat in chat_ids
    ]
    async with session_factory() as session, session.begin():
        await session.execute(insert(Contact), contacts)
        await session.execute(insert(Conversation), conversations)
    return Recipients(
        chat_ids=list(chat_ids),
        contact_ids=[str(row["id"]) for row in contacts],
        conversation_ids=[str(row["id"]) for row in conversations],
    )


async def connect(
    client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    double: TelegramDouble,
    *,
    approval: str = "required",
    daily_limit: int = 1000,
) -> tuple[FakeBot, str]:
    bot, body = await connect_bot(client, workspace, double)
    patched = await client.patch(
        f"/api/v1/connections/{body['id']}",
        json={"approval_mode": approval, "daily_limit": daily_limit},
        headers=workspace.headers(),
    )
    assert patched.status_code == 200, patched.text
    return bot, str(body["id"])


async def create(
    client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    connection_id: str,
    *,
    token: str | None = None,
    **body: Any,
) -> dict[str, Any]:
    payload = {"name": "Launch", "connection_id": connection_id, "text": "We launched!", **body}
    response = await client.post(BROADCASTS, json=payload, headers=workspace.headers(token))
    assert response.status_code == 202, response.text
    broadcast: dict[str, Any] = response.json()
    return broadcast


async def get(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, broadcast_id: str
) -> dict[str, Any]:
    response = await client.get(f"{BROADCASTS}/{broadcast_id}", headers=workspace.headers())
    assert response.status_code == 200, response.text
    broadcast: dict[str, Any] = response.json()
    return broadcast


async def messages_of(
    client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    broadcast_id: str,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Every message of the broadcast, following the cursor to the end."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    if status is not None:
        params["status"] = status
    while True:
        response = await client.get(
            f"{BROADCASTS}/{broadcast_id}/messages", params=params, headers=workspace.headers()
        )
        assert response.status_code == 200, response.text
        page = response.json()
        found.extend(page["items"])
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]


@contextlib.asynccontextmanager
async def dispatching(
    engine: AsyncEngine,
    telegram_api_base: str,
    redis: Redis,
    *,
    limits: PacingLimits | None = None,
    options: DispatchSettings = FAST,
) -> AsyncIterator[Dispatcher]:
    """A dispatcher, as the worker runs it, until the block ends."""
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        dispatcher = new_dispatcher(
            engine,
            TelegramClient(http, telegram_api_base, request_timeout=5),
            RedisOutboundPacer(redis, limits, prefix=f"test-{uuid.uuid4().hex[:6]}"),
            options=options,
        )
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            yield dispatcher
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
