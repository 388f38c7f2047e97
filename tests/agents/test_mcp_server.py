"""The MCP server at /mcp, spoken to by the SDK's own client over real HTTP.

The application runs under uvicorn on a free port (as `integrations serve` runs
it), on PostgreSQL and Redis, with the Bot API double standing in for Telegram.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.config import Settings
from app.main import create_app
from app.messages.models import OutboundMessage
from app.server import http_protocol
from tests.conftest import WorkspaceFixture
from tests.connections.helpers import webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.messages.test_dispatcher import connect, dispatching
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.state import FakeBot
from tests.waiting import eventually

UPDATE_IDS = itertools.count(5000)
TOOLS = {
    "send_message",
    "get_message",
    "list_conversations",
    "get_conversation_messages",
    "list_connections",
}


@dataclass
class Service:
    """The service listening on a real port: its base URL and a REST client."""

    base_url: str
    rest: httpx.AsyncClient

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"


@contextlib.asynccontextmanager
async def serving(settings: Settings, port: int) -> AsyncIterator[Service]:
    """The application under uvicorn on 127.0.0.1:`port` until the block ends."""
    app = create_app(settings, configure_logs=False)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        http=http_protocol(settings),
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), "the server to start")
        assert not task.done(), "the server exited at start-up"
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as rest:
            yield Service(base_url, rest)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
def mcp_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"mcp_enabled": True})


@pytest.fixture
async def service(
    mcp_settings: Settings,
    unused_port: int,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> AsyncIterator[Service]:
    async with serving(mcp_settings, unused_port) as running:
        yield running


@contextlib.asynccontextmanager
async def mcp_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    """An initialized session of the SDK's client, authenticating with `token`."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def answer(result: CallToolResult) -> dict[str, Any]:
    """A successful tool call's structured answer."""
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


async def inbound(
    service: Service, double: TelegramDouble, bot: FakeBot, chat_id: int, text: str
) -> None:
    """A private message from `chat_id` to the bot, delivered to the webhook."""
    key, secret = webhook_credentials(double, bot)
    update_id = next(UPDATE_IDS)
    update = {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_767_000_000,
            "chat": {"id": chat_id, "type": "private", "first_name": "Ann"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Ann"},
            "text": text,
        },
    }
    delivered = await post_update(service.rest, key, secret, update)
    assert delivered.status_code == 200, delivered.text


async def outbound_count(session_factory: async_sessionmaker[AsyncSession]) -> int:
    async with session_factory() as session:
        count = await session.scalar(select(func.count()).select_from(OutboundMessage))
    return int(count or 0)


async def test_the_server_lists_its_five_tools_and_says_sending_needs_approval(
    service: Service, workspace: WorkspaceFixture
) -> None:
    _, sender = await workspace.token(Role.sender, "agent")
    async with mcp_session(service.mcp_url, sender) as session:
        listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOLS
    send = tools["send_message"]
    assert send.description is not None and "NEEDS APPROVAL" in send.description
    assert "never waits" in send.description
    assert {"connection_id", "text", "chat_id", "conversation_id"} <= set(
        send.input_schema["properties"]
    )
    assert "parse_mode" in send.input_schema["properties"]
    assert "idempotency_key" in send.input_schema["properties"]
    # The workspace comes from the token: no tool takes one.
    for tool in listed.tools:
        assert not any("workspace" in name for name in tool.input_schema["properties"])
        assert not any("token" in name for name in tool.input_schema["properties"])


async def test_a_message_sent_by_an_agent_waits_for_approval_and_is_sent_once_approved(
    service: Service,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
    mcp_settings: Settings,
    redis_client: Redis,
) -> None:
    bot, connection_id = await connect(
        service.rest, workspace, telegram_double, approval="required"
    )
    sender_id, sender = await workspace.token(Role.sender, "agent")
    _, reviewer = await workspace.token(Role.reviewer, "lead")
    async with (
        dispatching(db_engine, mcp_settings, redis_client) as dispatchers,
        mcp_session(service.mcp_url, sender) as session,
    ):
        sent = answer(
            await session.call_tool(
                "send_message",
                {
                    "connection_id": connection_id,
                    "chat_id": 501,
                    "text": "<b>Your order</b> ships today",
                    "parse_mode": "HTML",
                    "idempotency_key": "order-17",
                },
            )
        )
        assert sent["status"] == "pending_approval" and sent["created"] is True
        assert sent["requested_by"] == str(sender_id)
        # The same key and message answer the same message: nothing is queued twice.
        repeat = answer(
            await session.call_tool(
                "send_message",
                {
                    "connection_id": connection_id,
                    "chat_id": 501,
                    "text": "<b>Your order</b> ships today",
                    "parse_mode": "HTML",
                    "idempotency_key": "order-17",
                },
            )
        )
        assert repeat["id"] == sent["id"] and repeat["created"] is False

        # A dispatch round finds nothing to send: the message waits for a reviewer.
        assert await dispatchers[0].dispatch_once() == 0
        assert telegram_double.sent_messages(bot) == []
        pending = answer(await session.call_tool("get_message", {"message_id": sent["id"]}))
        assert pending["status"] == "pending_approval"

        # The REST API shows the same message in the reviewers' queue.
        queue = await service.rest.get(
            "/api/v1/messages",
            params={"status": "pending_approval"},
            headers=workspace.headers(reviewer),
        )
        assert [m["id"] for m in queue.json()["items"]] == [sent["id"]]
        approved = await service.rest.post(
            f"/api/v1/messages/{sent['id']}/approve", headers=workspace.headers(reviewer)
        )
        assert approved.status_code == 200, approved.text

        async def delivered() -> dict[str, Any] | None:
            message = answer(await session.call_tool("get_message", {"message_id": sent["id"]}))
            return message if message["status"] == "sent" else None

        done = await eventually(delivered, "the approved message to be sent")
    [record] = telegram_double.sent_messages(bot)
    assert record.chat_id == 501 and record.text == "<b>Your order</b> ships today"
    assert done["telegram_message_id"] == record.message_id and done["last_error"] is None


async def test_the_inbox_and_connections_are_readable_and_carry_no_secret(
    service: Service, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, connection_id = await connect(service.rest, workspace, telegram_double, approval="none")
    _, sender = await workspace.token(Role.sender, "agent")
    async with mcp_session(service.mcp_url, sender) as session:
        connections = answer(await session.call_tool("list_connections", {}))
        [listed] = connections["items"]
        assert listed["id"] == connection_id
        assert listed["bot"]["username"] == bot.username
        assert listed["status"] and listed["name"] and listed["approval_mode"] == "none"

        await inbound(service, telegram_double, bot, 777, "hello")
        conversations = answer(
            await session.call_tool(
                "list_conversations", {"connection_id": connection_id, "limit": 10}
            )
        )
        [conversation] = conversations["items"]
        assert conversation["chat_id"] == 777
        messages = answer(
            await session.call_tool(
                "get_conversation_messages", {"conversation_id": conversation["id"]}
            )
        )
        assert [(m["direction"], m["text"]) for m in messages["items"]] == [("inbound", "hello")]
        queued = answer(
            await session.call_tool(
                "send_message",
                {
                    "connection_id": connection_id,
                    "conversation_id": conversation["id"],
                    "text": "Hi Ann",
                },
            )
        )
        # approval_mode none: queued at once, no reviewer needed (the worker sends it).
        assert queued["status"] == "queued" and queued["chat_id"] == 777
        after = answer(
            await session.call_tool(
                "get_conversation_messages", {"conversation_id": conversation["id"]}
            )
        )
        assert [(m["direction"], m["text"], m["outbound_message_id"]) for m in after["items"]] == [
            ("inbound", "hello", None),
            ("outbound", "Hi Ann", queued["id"]),
        ]

        answers = json.dumps([connections, conversations, messages, queued, after])
    assert bot.token is not None and bot.token not in answers
    assert sender not in answers and workspace.admin_token not in answers
    assert "secret" not in answers


async def test_pages_of_conversations_follow_the_cursor(
    service: Service, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, _ = await connect(service.rest, workspace, telegram_double, approval="none")
    for chat_id in (11, 12, 13):
        await inbound(service, telegram_double, bot, chat_id, "x")
    _, sender = await workspace.token(Role.sender, "agent")
    async with mcp_session(service.mcp_url, sender) as session:
        first = answer(await session.call_tool("list_conversations", {"limit": 2}))
        assert len(first["items"]) == 2 and first["next_cursor"]
        second = answer(
            await session.call_tool(
                "list_conversations", {"limit": 2, "cursor": first["next_cursor"]}
            )
        )
    assert second["next_cursor"] is None
    seen = [c["chat_id"] for c in first["items"] + second["items"]]
    assert sorted(seen) == [11, 12, 13]


async def test_a_sender_of_one_workspace_reaches_nothing_of_another(
    service: Service,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    their_bot, theirs = await connect(
        service.rest, other_workspace, telegram_double, approval="none"
    )
    await inbound(service, telegram_double, their_bot, 900, "theirs")
    their_message = (
        await service.rest.post(
            "/api/v1/messages",
            json={"connection_id": theirs, "chat_id": 900, "text": "theirs"},
            headers=other_workspace.headers(),
        )
    ).json()
    their_conversation = (
        await service.rest.get("/api/v1/conversations", headers=other_workspace.headers())
    ).json()["items"][0]
    before = await outbound_count(db_session_factory)

    _, sender = await workspace.token(Role.sender, "agent")
    async with mcp_session(service.mcp_url, sender) as session:
        assert answer(await session.call_tool("list_connections", {}))["items"] == []
        assert answer(await session.call_tool("list_conversations", {}))["items"] == []
        assert (
            answer(await session.call_tool("list_conversations", {"connection_id": theirs}))[
                "items"
            ]
            == []
        )
        refused = [
            await session.call_tool("get_message", {"message_id": their_message["id"]}),
            await session.call_tool(
                "get_conversation_messages", {"conversation_id": their_conversation["id"]}
            ),
            await session.call_tool(
                "send_message", {"connection_id": theirs, "chat_id": 900, "text": "hijack"}
            ),
            await session.call_tool(
                "send_message",
                {
                    "connection_id": theirs,
                    "conversation_id": their_conversation["id"],
                    "text": "hijack",
                },
            ),
        ]
    for result in refused:
        assert "not_found" in error_text(result)
    assert "theirs" not in json.dumps([r.model_dump(mode="json") for r in refused])
    assert await outbound_count(db_session_factory) == before


async def test_a_reviewer_token_reads_but_cannot_send(
    service: Service,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(service.rest, workspace, telegram_double, approval="none")
    _, reviewer = await workspace.token(Role.reviewer, "lead")
    async with mcp_session(service.mcp_url, reviewer) as session:
        refused = await session.call_tool(
            "send_message", {"connection_id": connection_id, "chat_id": 501, "text": "Hi"}
        )
        listed = answer(await session.call_tool("list_connections", {}))
    assert "forbidden" in error_text(refused) and "reviewer" in error_text(refused)
    assert [c["id"] for c in listed["items"]] == [connection_id]
    assert await outbound_count(db_session_factory) == 0
    assert telegram_double.calls_for("sendMessage") == []


async def test_send_message_validates_as_the_rest_api_does(
    service: Service, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _, connection_id = await connect(service.rest, workspace, telegram_double)
    _, sender = await workspace.token(Role.sender, "agent")
    async with mcp_session(service.mcp_url, sender) as session:
        bad_html = await session.call_tool(
            "send_message",
            {"connection_id": connection_id, "chat_id": 5, "text": "<b>x", "parse_mode": "HTML"},
        )
        no_address = await session.call_tool(
            "send_message", {"connection_id": connection_id, "text": "x"}
        )
        unknown = await session.call_tool(
            "send_message", {"connection_id": str(uuid.uuid4()), "chat_id": 5, "text": "x"}
        )
        answer(
            await session.call_tool(
                "send_message",
                {
                    "connection_id": connection_id,
                    "chat_id": 5,
                    "text": "one",
                    "idempotency_key": "k",
                },
            )
        )
        reused = await session.call_tool(
            "send_message",
            {"connection_id": connection_id, "chat_id": 5, "text": "two", "idempotency_key": "k"},
        )
    assert error_text(bad_html).count("validation_error: text:") == 1
    assert "validation_error" in error_text(no_address)
    assert "chat_id" in error_text(no_address)
    assert "not_found: No such connection." in error_text(unknown)
    assert "idempotency_key_reused" in error_text(reused)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wsk_" + "x" * 40, "Basic dXNlcjpwYXNz", "Bearer"],
    ids=["none", "unknown", "other-scheme", "empty"],
)
async def test_without_a_valid_token_mcp_is_401_in_the_error_shape(
    service: Service, authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if authorization is not None:
        headers["Authorization"] = authorization
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "1"},
        },
    }
    response = await service.rest.post("/mcp", json=initialize, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthenticated"


async def test_the_sdk_client_cannot_start_a_session_without_a_token(service: Service) -> None:
    with pytest.raises(ExceptionGroup) as raised:
        async with (
            httpx2.AsyncClient(timeout=10) as http,
            streamable_http_client(service.mcp_url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await asyncio.wait_for(session.initialize(), 20)
    assert raised.group_contains(MCPError, depth=None)


async def test_a_revoked_token_is_refused(service: Service, workspace: WorkspaceFixture) -> None:
    token_id, sender = await workspace.token(Role.sender, "agent")
    revoked = await service.rest.delete(f"/api/v1/tokens/{token_id}", headers=workspace.headers())
    assert revoked.status_code in (200, 204), revoked.text
    response = await service.rest.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": f"Bearer {sender}"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


async def test_a_foreign_host_or_origin_is_refused(
    service: Service, workspace: WorkspaceFixture
) -> None:
    _, sender = await workspace.token(Role.sender, "agent")
    headers = {
        "Authorization": f"Bearer {sender}",
        "Accept": "application/json, text/event-stream",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    rebound = await service.rest.post(
        "/mcp", json=body, headers={**headers, "Host": "attacker.example"}
    )
    assert rebound.status_code == 421
    foreign = await service.rest.post(
        "/mcp", json=body, headers={**headers, "Origin": "https://attacker.example"}
    )
    assert foreign.status_code == 403
    # The public host (PUBLIC_BASE_URL) and its origin are allowed by default.
    public = await service.rest.post(
        "/mcp",
        json=body,
        headers={
            **headers,
            "Host": "integrations.example.com",
            "Origin": "https://integrations.example.com",
        },
    )
    assert public.status_code not in (401, 403, 421), public.text


async def test_without_the_setting_mcp_is_404(
    settings: Settings,
    unused_port: int,
    workspace: WorkspaceFixture,
    redis_client: Redis,
) -> None:
    assert settings.mcp_enabled is False
    async with serving(settings, unused_port) as running:
        response = await running.rest.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers=workspace.headers(),
        )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
