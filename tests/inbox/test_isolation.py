"""Tenancy of the inbox API: another workspace's rows are never listed, and their
ids answer 404 exactly as missing ones do (SPEC section 2)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import WorkspaceFixture
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble


def private_message(update_id: int, chat_id: int, text: str) -> dict[str, Any]:
    person = {"id": chat_id, "first_name": f"User {chat_id}"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_700_000_000,
            "chat": {**person, "type": "private"},
            "from": {**person, "is_bot": False},
            "text": text,
        },
    }


async def receive(
    client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    double: TelegramDouble,
    chat_id: int,
    text: str,
) -> str:
    """Connect a bot to `workspace` and deliver one message to it; the connection id."""
    bot, body = await connect_bot(client, workspace, double)
    key, secret = webhook_credentials(double, bot)
    response = await post_update(client, key, secret, private_message(chat_id, chat_id, text))
    assert response.status_code == 200, response.text
    connection_id: str = body["id"]
    return connection_id


async def items(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, path: str
) -> list[dict[str, Any]]:
    response = await client.get(path, headers=workspace.headers())
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["items"]
    return found


@pytest.fixture
async def two_inboxes(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> dict[str, Any]:
    """Acme and Globex, each with a connection that received one message."""
    acme = await receive(app_client, workspace, telegram_double, 1001, "for Acme")
    globex = await receive(app_client, other_workspace, telegram_double, 2002, "for Globex")
    [globex_conversation] = await items(app_client, other_workspace, "/api/v1/conversations")
    return {"acme": acme, "globex": globex, "globex_conversation": globex_conversation["id"]}


async def test_lists_show_only_the_callers_workspace(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, two_inboxes: dict[str, Any]
) -> None:
    contacts = await items(app_client, workspace, "/api/v1/contacts")
    conversations = await items(app_client, workspace, "/api/v1/conversations")
    assert [c["telegram_chat_id"] for c in contacts] == [1001]
    assert [c["chat_id"] for c in conversations] == [1001]
    assert {c["connection_id"] for c in contacts + conversations} == {two_inboxes["acme"]}
    events = await items(app_client, workspace, f"/api/v1/connections/{two_inboxes['acme']}/events")
    assert [e["update_id"] for e in events] == [1001]


async def test_filtering_by_another_workspaces_connection_lists_nothing(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, two_inboxes: dict[str, Any]
) -> None:
    foreign = two_inboxes["globex"]
    assert await items(app_client, workspace, f"/api/v1/contacts?connection_id={foreign}") == []
    assert (
        await items(app_client, workspace, f"/api/v1/conversations?connection_id={foreign}") == []
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/connections/{globex}/events",
        "/api/v1/conversations/{globex_conversation}/messages",
        "/api/v1/connections/{missing}/events",
        "/api/v1/conversations/{missing}/messages",
    ],
)
async def test_another_workspaces_ids_answer_404_like_missing_ones(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    two_inboxes: dict[str, Any],
    path: str,
) -> None:
    url = path.format(missing=uuid.uuid4(), **two_inboxes)
    response = await app_client.get(url, headers=workspace.headers())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "Globex" not in response.text and "2002" not in response.text


async def test_the_owner_reads_its_own_conversation(
    app_client: httpx.AsyncClient, other_workspace: WorkspaceFixture, two_inboxes: dict[str, Any]
) -> None:
    """The 404s above are about tenancy: the same ids work for their workspace."""
    messages = await items(
        app_client,
        other_workspace,
        f"/api/v1/conversations/{two_inboxes['globex_conversation']}/messages",
    )
    assert [m["text"] for m in messages] == ["for Globex"]
