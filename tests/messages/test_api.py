"""The send API and the approval queue (SPEC section 7), on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.messages.models import OutboundMessage
from tests.conftest import WorkspaceFixture
from tests.connections.helpers import connect_bot
from tests.telegram_double.double import TelegramDouble

SEND = "/api/v1/messages"


async def connection(
    client: httpx.AsyncClient, workspace: WorkspaceFixture, double: TelegramDouble
) -> str:
    _, body = await connect_bot(client, workspace, double)
    connection_id: str = body["id"]
    return connection_id


async def send(
    client: httpx.AsyncClient,
    token: str,
    body: dict[str, Any],
    *,
    key: str | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(SEND, json=body, headers=headers)


@pytest.fixture
async def sender(workspace: WorkspaceFixture) -> tuple[uuid.UUID, str]:
    return await workspace.token(Role.sender, "crm")


@pytest.fixture
async def reviewer(workspace: WorkspaceFixture) -> tuple[uuid.UUID, str]:
    return await workspace.token(Role.reviewer, "lead")


async def test_a_message_waits_for_a_reviewer_and_is_queued_on_approval(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    sender: tuple[uuid.UUID, str],
    reviewer: tuple[uuid.UUID, str],
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    sender_id, sender_token = sender
    response = await send(
        app_client, sender_token, {"connection_id": connection_id, "chat_id": 501, "text": "Hi"}
    )
    assert response.status_code == 202, response.text
    message = response.json()
    assert message["status"] == "pending_approval"
    assert message["requested_by"] == str(sender_id)
    assert message["chat_id"] == 501 and message["expires_at"] is not None

    pending = await app_client.get(
        SEND, params={"status": "pending_approval"}, headers=workspace.headers(reviewer[1])
    )
    assert [m["id"] for m in pending.json()["items"]] == [message["id"]]

    approved = await app_client.post(
        f"{SEND}/{message['id']}/approve", headers=workspace.headers(reviewer[1])
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "queued"
    assert approved.json()["reviewed_by"] == str(reviewer[0])

    again = await app_client.post(
        f"{SEND}/{message['id']}/approve", headers=workspace.headers(reviewer[1])
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_pending"
    assert "queued" in again.json()["error"]["message"]
    # Nothing reached Telegram: only the worker sends.
    assert telegram_double.calls_for("sendMessage") == []


async def test_the_requester_cannot_approve_its_own_message(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    message = (
        await send(
            app_client,
            workspace.admin_token,
            {"connection_id": connection_id, "chat_id": 501, "text": "Hi"},
        )
    ).json()
    refused = await app_client.post(f"{SEND}/{message['id']}/approve", headers=workspace.headers())
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "self_approval"


async def test_a_rejected_message_keeps_its_reason_and_is_audited(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    sender: tuple[uuid.UUID, str],
    reviewer: tuple[uuid.UUID, str],
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    message = (
        await send(
            app_client, sender[1], {"connection_id": connection_id, "chat_id": 5, "text": "x"}
        )
    ).json()
    rejected = await app_client.post(
        f"{SEND}/{message['id']}/reject",
        json={"reason": "Off-brand"},
        headers=workspace.headers(reviewer[1]),
    )
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["review_reason"] == "Off-brand"
    audit = await app_client.get(
        "/api/v1/audit", params={"message_id": message["id"]}, headers=workspace.headers()
    )
    actions = [(e["action"], e["actor_token_id"], e["reason"]) for e in audit.json()["items"]]
    assert actions == [
        ("rejected", str(reviewer[0]), "Off-brand"),
        ("requested", str(sender[0]), None),
    ]


async def test_two_reviewers_racing_on_one_message_one_wins(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    sender: tuple[uuid.UUID, str],
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    reviewers = [await workspace.token(Role.reviewer, f"r{n}") for n in range(2)]
    for _round in range(5):
        message = (
            await send(
                app_client, sender[1], {"connection_id": connection_id, "chat_id": 7, "text": "x"}
            )
        ).json()
        url = f"{SEND}/{message['id']}"
        answers = await asyncio.gather(
            app_client.post(f"{url}/approve", headers=workspace.headers(reviewers[0][1])),
            app_client.post(
                f"{url}/reject", json={"reason": "no"}, headers=workspace.headers(reviewers[1][1])
            ),
        )
        assert sorted(a.status_code for a in answers) == [200, 409]


async def test_cancel_is_for_the_requester_or_an_admin_while_unsent(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    sender: tuple[uuid.UUID, str],
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    _, other_sender = await workspace.token(Role.sender, "other")
    message = (
        await send(
            app_client, sender[1], {"connection_id": connection_id, "chat_id": 5, "text": "x"}
        )
    ).json()
    url = f"{SEND}/{message['id']}/cancel"
    refused = await app_client.post(url, headers=workspace.headers(other_sender))
    assert refused.status_code == 403
    cancelled = await app_client.post(url, headers=workspace.headers(sender[1]))
    assert cancelled.json()["status"] == "cancelled"
    twice = await app_client.post(url, headers=workspace.headers())
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "not_cancellable"


@pytest.mark.parametrize(
    ("text", "parse_mode", "problem"),
    [
        ("<b>bold</i>", "HTML", "text"),
        ("<div>x</div>", "HTML", "text"),
        ("Total: 5.", "MarkdownV2", "reserved"),
        ("x" * 4097, None, "4096"),
        ("   ", None, "empty"),
    ],
)
async def test_text_telegram_would_refuse_is_422_before_anything_is_queued(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    text: str,
    parse_mode: str | None,
    problem: str,
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    body = {"connection_id": connection_id, "chat_id": 5, "text": text, "parse_mode": parse_mode}
    response = await send(app_client, workspace.admin_token, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "text" and problem in error["message"]
    async with db_session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(OutboundMessage)) == 0


@pytest.mark.parametrize(
    ("text", "parse_mode"),
    [
        ('<b>bold <i>and italic</i></b> &amp; <a href="https://example.com">link</a>', "HTML"),
        ("*bold* _italic_ \\. escaped", "MarkdownV2"),
        ("plain text, no parsing: <b> stays", None),
    ],
)
async def test_valid_formatted_text_is_accepted(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    text: str,
    parse_mode: str | None,
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    body = {"connection_id": connection_id, "chat_id": 5, "text": text, "parse_mode": parse_mode}
    response = await send(app_client, workspace.admin_token, body)
    assert response.status_code == 202, response.text
    assert response.json()["text"] == text


async def test_twenty_identical_requests_with_one_key_make_one_message(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    sender: tuple[uuid.UUID, str],
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    body = {"connection_id": connection_id, "chat_id": 501, "text": "Once"}
    answers = await asyncio.gather(
        *(send(app_client, sender[1], body, key="order-42") for _ in range(20))
    )
    assert {a.status_code for a in answers} <= {200, 202}
    assert sum(a.status_code == 202 for a in answers) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    async with db_session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(OutboundMessage)) == 1

    other = await send(app_client, sender[1], {**body, "text": "Twice"}, key="order-42")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_deleted_connection_refuses_messages_and_cancels_its_queue(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    body = {"connection_id": connection_id, "chat_id": 5, "text": "x"}
    pending = (await send(app_client, workspace.admin_token, body)).json()
    deleted = await app_client.delete(
        f"/api/v1/connections/{connection_id}", headers=workspace.headers()
    )
    assert deleted.status_code == 200
    after = await app_client.get(f"{SEND}/{pending['id']}", headers=workspace.headers())
    assert after.json()["status"] == "cancelled"
    refused = await send(app_client, workspace.admin_token, body)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "connection_deleted"


async def test_another_workspaces_messages_answer_404(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
) -> None:
    connection_id = await connection(app_client, workspace, telegram_double)
    message = (
        await send(
            app_client,
            workspace.admin_token,
            {"connection_id": connection_id, "chat_id": 5, "text": "x"},
        )
    ).json()
    _, foreign_reviewer = await other_workspace.token(Role.reviewer)
    url = f"{SEND}/{message['id']}"
    for method, path, token, json in [
        ("GET", url, other_workspace.admin_token, None),
        ("POST", f"{url}/cancel", other_workspace.admin_token, None),
        ("POST", f"{url}/approve", foreign_reviewer, None),
        ("POST", f"{url}/reject", foreign_reviewer, {"reason": "no"}),
    ]:
        response = await app_client.request(
            method, path, json=json, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 404, (method, path)
    listed = await app_client.get(SEND, headers=other_workspace.headers())
    assert listed.json()["items"] == []
    sent_elsewhere = await send(
        app_client,
        other_workspace.admin_token,
        {"connection_id": connection_id, "chat_id": 5, "text": "x"},
    )
    assert sent_elsewhere.status_code == 404
