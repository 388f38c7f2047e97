"""The broadcast API against real PostgreSQL (and SQLite where both run it), Redis
and the Bot API double: creating, deciding, reading, tenancy, validation."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.broadcasts.models import Broadcast
from app.db import utcnow
from app.messages.models import OutboundMessage
from tests.broadcasts.helpers import (
    BROADCASTS,
    connect,
    create,
    get,
    messages_of,
    seed_recipients,
)
from tests.conftest import BackendApp, WorkspaceFixture
from tests.connections.helpers import webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update

MESSAGE_STATUSES = {
    "pending_approval",
    "queued",
    "sending",
    "sent",
    "failed",
    "rejected",
    "expired",
    "cancelled",
}


def only(**expected: int) -> dict[str, int]:
    """Counts as the API answers them: every status, zero unless given."""
    return {status: expected.get(status, 0) for status in MESSAGE_STATUSES}


async def test_a_broadcast_to_contacts_waits_for_one_approval_with_a_message_per_recipient(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [501, 502, 503])
    sender_id, sender = await workspace.token(Role.sender)
    broadcast = await create(
        app_client,
        workspace,
        connection_id,
        token=sender,
        text="<b>New</b> plans",
        parse_mode="HTML",
        contact_ids=people.contact_ids,
    )
    assert broadcast["name"] == "Launch"
    assert broadcast["status"] == "pending_approval"
    assert broadcast["recipient_count"] == 3
    assert broadcast["counts"] == only(pending_approval=3)
    assert broadcast["requested_by"] == str(sender_id)
    assert broadcast["reviewed_by"] is None
    assert datetime.fromisoformat(broadcast["created_at"]).tzinfo is not None
    assert broadcast["expires_at"] is not None

    messages = await messages_of(app_client, workspace, broadcast["id"])
    assert [m["chat_id"] for m in messages] == [501, 502, 503]
    assert {m["status"] for m in messages} == {"pending_approval"}
    assert {m["broadcast_id"] for m in messages} == {broadcast["id"]}
    assert {m["text"] for m in messages} == {"<b>New</b> plans"}
    assert {m["parse_mode"] for m in messages} == {"HTML"}
    # Each is an ordinary message: readable on its own, and shown in its conversation.
    one = await app_client.get(f"/api/v1/messages/{messages[0]['id']}", headers=workspace.headers())
    assert one.json()["broadcast_id"] == broadcast["id"]
    assert messages[0]["conversation_id"] == people.conversation_ids[0]
    inbox = await app_client.get(
        f"/api/v1/conversations/{people.conversation_ids[0]}/messages", headers=workspace.headers()
    )
    [shown] = inbox.json()["items"]
    assert shown["direction"] == "outbound" and shown["text"] == "<b>New</b> plans"

    listed = await app_client.get(BROADCASTS, headers=workspace.headers())
    assert [b["id"] for b in listed.json()["items"]] == [broadcast["id"]]
    assert listed.json()["items"][0]["counts"]["pending_approval"] == 3


async def test_a_contact_who_wrote_through_the_webhook_is_a_recipient_in_their_conversation(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, connection_id = await connect(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    assert (
        await post_update(app_client, key, secret, load_update("01_message"))
    ).status_code == 200
    contacts = (await app_client.get("/api/v1/contacts", headers=workspace.headers())).json()
    [contact] = contacts["items"]
    conversations = await app_client.get("/api/v1/conversations", headers=workspace.headers())
    [conversation] = conversations.json()["items"]
    broadcast = await create(app_client, workspace, connection_id, contact_ids=[contact["id"]])
    [message] = await messages_of(app_client, workspace, broadcast["id"])
    assert message["chat_id"] == contact["telegram_chat_id"]
    assert message["conversation_id"] == conversation["id"]


async def test_repeated_recipients_count_once_in_the_order_first_given(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [601, 602])
    a, b = people.conversation_ids
    broadcast = await create(app_client, workspace, connection_id, conversation_ids=[b, a, b, b, a])
    assert broadcast["recipient_count"] == 2
    messages = await messages_of(app_client, workspace, broadcast["id"])
    assert [m["conversation_id"] for m in messages] == [b, a]


async def test_more_than_ten_thousand_recipients_are_refused(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    ids = [str(uuid.uuid4()) for _ in range(10_001)]
    response = await app_client.post(
        BROADCASTS,
        json={"name": "Too many", "connection_id": connection_id, "text": "Hi", "contact_ids": ids},
        headers=workspace.headers(),
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "contact_ids"
    assert (await app_client.get(BROADCASTS, headers=workspace.headers())).json()["items"] == []


async def test_the_first_id_that_is_not_a_recipient_of_the_connection_is_named(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    _, second_connection = await connect(app_client, workspace, telegram_double)
    _, foreign_connection = await connect(app_client, other_workspace, telegram_double)
    mine = await seed_recipients(db_session_factory, workspace, connection_id, [701, 702])
    other_bot = await seed_recipients(db_session_factory, workspace, second_connection, [703])
    foreign = await seed_recipients(db_session_factory, other_workspace, foreign_connection, [704])
    unknown = str(uuid.uuid4())
    cases: list[tuple[str, list[str], str]] = [
        ("contact_ids", [mine.contact_ids[0], unknown, foreign.contact_ids[0]], unknown),
        (
            "contact_ids",
            [*mine.contact_ids, foreign.contact_ids[0], unknown],
            foreign.contact_ids[0],
        ),
        ("contact_ids", [other_bot.contact_ids[0], *mine.contact_ids], other_bot.contact_ids[0]),
        (
            "conversation_ids",
            [*mine.conversation_ids, foreign.conversation_ids[0]],
            foreign.conversation_ids[0],
        ),
        # A contact's id is not a conversation's.
        ("conversation_ids", [mine.contact_ids[0]], mine.contact_ids[0]),
    ]
    for field, ids, named in cases:
        response = await app_client.post(
            BROADCASTS,
            json={"name": "N", "connection_id": connection_id, "text": "Hi", field: ids},
            headers=workspace.headers(),
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field
        assert named in error["message"]
        assert all(other not in error["message"] for other in ids if other != named)
    assert (await app_client.get(BROADCASTS, headers=workspace.headers())).json()["items"] == []
    async with db_session_factory() as session:
        assert (await session.execute(select(OutboundMessage))).first() is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"contact_ids": None}, None),
        ({"conversation_ids": ["CONVERSATION"]}, None),
        ({"contact_ids": []}, "contact_ids"),
        ({"text": ""}, "text"),
        ({"text": "<b>unclosed"}, "text"),
        ({"parse_mode": "Markdown2"}, "parse_mode"),
        ({"name": ""}, "name"),
        ({"contact_ids": ["not-a-uuid"]}, "contact_ids.0"),
        ({"reply_to_message_id": 5}, "reply_to_message_id"),
    ],
)
async def test_a_request_that_is_not_valid_is_refused_before_anything_is_stored(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    change: dict[str, Any],
    field: str | None,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [801])
    body: dict[str, Any] = {
        "name": "Bad",
        "connection_id": connection_id,
        "text": "<b>fine</b>",
        "parse_mode": "HTML",
        "contact_ids": people.contact_ids,
    }
    for name, value in change.items():
        if value is None:
            body.pop(name)
        elif value == ["CONVERSATION"]:
            body[name] = people.conversation_ids
        else:
            body[name] = value
    response = await app_client.post(BROADCASTS, json=body, headers=workspace.headers())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    if field is not None:
        assert response.json()["error"]["field"] == field
    assert (await app_client.get(BROADCASTS, headers=workspace.headers())).json()["items"] == []


async def test_the_same_idempotency_key_and_body_answer_the_same_broadcast(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [901, 902])
    body = {
        "name": "Once",
        "connection_id": connection_id,
        "text": "Hi",
        "contact_ids": people.contact_ids,
    }
    headers = {**workspace.headers(), "Idempotency-Key": "launch-1"}
    first = await app_client.post(BROADCASTS, json=body, headers=headers)
    assert first.status_code == 202
    # The same body, spelled in another order.
    again = await app_client.post(BROADCASTS, json=dict(reversed(body.items())), headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    changed = await app_client.post(BROADCASTS, json={**body, "text": "Hello"}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    # Another key is another broadcast.
    other = await app_client.post(
        BROADCASTS, json=body, headers={**workspace.headers(), "Idempotency-Key": "launch-2"}
    )
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    async with db_session_factory() as session:
        rows = (await session.execute(select(OutboundMessage.broadcast_id))).scalars().all()
    assert sorted(map(str, rows)) == sorted([first.json()["id"]] * 2 + [other.json()["id"]] * 2)


async def test_one_approval_queues_every_message_spread_at_the_broadcast_rate(
    backend_app: BackendApp, telegram_double: TelegramDouble
) -> None:
    client, workspace = backend_app.client, backend_app.workspace
    _, connection_id = await connect(client, workspace, telegram_double)
    people = await seed_recipients(
        workspace.session_factory, workspace, connection_id, list(range(1001, 1011))
    )
    broadcast = await create(client, workspace, connection_id, contact_ids=people.contact_ids)
    reviewer_id, reviewer = await workspace.token(Role.reviewer)
    before = utcnow()
    approved = await client.post(
        f"{BROADCASTS}/{broadcast['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "sending"
    assert body["reviewed_by"] == str(reviewer_id)
    assert body["counts"] == only(queued=10)
    messages = await messages_of(client, workspace, broadcast["id"])
    assert {m["status"] for m in messages} == {"queued"}
    due = [datetime.fromisoformat(m["next_attempt_at"]) for m in messages]
    assert before <= due[0] <= utcnow()
    # 25 a second (the default): one every 40 ms, in the recipients' order.
    assert [b - a for a, b in itertools.pairwise(due)] == [timedelta(milliseconds=40)] * 9

    again = await client.post(
        f"{BROADCASTS}/{broadcast['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_pending"


async def test_a_connection_without_approval_queues_the_broadcast_at_once(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double, approval="none")
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1101, 1102])
    broadcast = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    assert broadcast["status"] == "sending"
    assert broadcast["counts"] == only(queued=2)
    assert broadcast["expires_at"] is None
    due = [
        datetime.fromisoformat(m["next_attempt_at"])
        for m in await messages_of(app_client, workspace, broadcast["id"])
    ]
    assert due[1] - due[0] == timedelta(milliseconds=40)


async def test_only_another_reviewer_or_admin_decides_and_a_rejected_broadcast_ends(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1201, 1202])
    _, sender = await workspace.token(Role.sender)
    reviewer_id, reviewer = await workspace.token(Role.reviewer)
    broadcast = await create(
        app_client, workspace, connection_id, token=sender, contact_ids=people.contact_ids
    )
    url = f"{BROADCASTS}/{broadcast['id']}"
    # A sender's role does not decide; an admin does, but never on its own broadcast.
    by_sender = await app_client.post(f"{url}/approve", headers=workspace.headers(sender))
    assert by_sender.status_code == 403
    assert by_sender.json()["error"]["code"] == "forbidden"
    mine = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    self_approved = await app_client.post(
        f"{BROADCASTS}/{mine['id']}/approve", headers=workspace.headers()
    )
    assert self_approved.status_code == 403
    assert self_approved.json()["error"]["code"] == "self_approval"
    # Reviewers do not create broadcasts.
    by_reviewer = await app_client.post(
        BROADCASTS,
        json={
            "name": "R",
            "connection_id": connection_id,
            "text": "Hi",
            "contact_ids": people.contact_ids,
        },
        headers=workspace.headers(reviewer),
    )
    assert by_reviewer.status_code == 403

    rejected = await app_client.post(
        f"{url}/reject", json={"reason": "Off-brand"}, headers=workspace.headers(reviewer)
    )
    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert body["status"] == "rejected"
    assert body["review_reason"] == "Off-brand"
    assert body["reviewed_by"] == str(reviewer_id)
    assert body["counts"] == only(rejected=2)
    messages = await messages_of(app_client, workspace, broadcast["id"])
    assert {(m["status"], m["review_reason"]) for m in messages} == {("rejected", "Off-brand")}
    late = await app_client.post(f"{url}/approve", headers=workspace.headers())
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_pending"
    cancel = await app_client.post(f"{url}/cancel", headers=workspace.headers(sender))
    assert cancel.status_code == 409 and cancel.json()["error"]["code"] == "not_cancellable"


async def test_its_requester_or_an_admin_cancels_a_pending_broadcast(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1301, 1302])
    _, sender = await workspace.token(Role.sender)
    _, another_sender = await workspace.token(Role.sender)
    broadcast = await create(
        app_client, workspace, connection_id, token=sender, contact_ids=people.contact_ids
    )
    url = f"{BROADCASTS}/{broadcast['id']}/cancel"
    refused = await app_client.post(url, headers=workspace.headers(another_sender))
    assert refused.status_code == 403
    cancelled = await app_client.post(url, headers=workspace.headers(sender))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["counts"] == only(cancelled=2)
    again = await app_client.post(url, headers=workspace.headers())
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"
    _, reviewer = await workspace.token(Role.reviewer)
    approve = await app_client.post(
        f"{BROADCASTS}/{broadcast['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert approve.status_code == 409


async def test_decisions_are_audited_on_the_broadcast(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1401])
    sender_id, sender = await workspace.token(Role.sender)
    reviewer_id, reviewer = await workspace.token(Role.reviewer)
    approved = await create(
        app_client, workspace, connection_id, token=sender, contact_ids=people.contact_ids
    )
    await app_client.post(
        f"{BROADCASTS}/{approved['id']}/approve", headers=workspace.headers(reviewer)
    )
    await app_client.post(f"{BROADCASTS}/{approved['id']}/cancel", headers=workspace.headers())
    rejected = await create(
        app_client, workspace, connection_id, token=sender, contact_ids=people.contact_ids
    )
    await app_client.post(
        f"{BROADCASTS}/{rejected['id']}/reject",
        json={"reason": "No"},
        headers=workspace.headers(reviewer),
    )

    async def trail(broadcast_id: str) -> list[tuple[str, str | None, str | None]]:
        response = await app_client.get(
            "/api/v1/audit", params={"broadcast_id": broadcast_id}, headers=workspace.headers()
        )
        assert response.status_code == 200
        return [
            (e["action"], e["actor_token_id"], e["reason"])
            for e in reversed(response.json()["items"])
        ]

    admin_id = await token_id_of_admin(db_session_factory, workspace)
    assert await trail(approved["id"]) == [
        ("broadcast_requested", str(sender_id), None),
        ("broadcast_approved", str(reviewer_id), None),
        ("broadcast_cancelled", admin_id, None),
    ]
    assert await trail(rejected["id"]) == [
        ("broadcast_requested", str(sender_id), None),
        ("broadcast_rejected", str(reviewer_id), "No"),
    ]


async def token_id_of_admin(
    session_factory: async_sessionmaker[AsyncSession], workspace: WorkspaceFixture
) -> str:
    from app.auth.models import ApiToken

    async with session_factory() as session:
        row = (
            await session.execute(
                select(ApiToken.id).where(
                    ApiToken.workspace_id == workspace.id, ApiToken.role == Role.admin
                )
            )
        ).scalar_one()
    return str(row)


async def test_another_workspaces_broadcast_is_not_found_anywhere(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1501])
    broadcast = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    url = f"{BROADCASTS}/{broadcast['id']}"
    _, foreign_reviewer = await other_workspace.token(Role.reviewer)
    calls = [
        ("GET", url, None, None),
        ("GET", f"{url}/messages", None, None),
        ("POST", f"{url}/approve", foreign_reviewer, None),
        ("POST", f"{url}/reject", foreign_reviewer, {"reason": "No"}),
        ("POST", f"{url}/cancel", None, None),
    ]
    for method, path, token, body in calls:
        response = await app_client.request(
            method, path, json=body, headers=other_workspace.headers(token)
        )
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    listed = await app_client.get(BROADCASTS, headers=other_workspace.headers())
    assert listed.json()["items"] == []
    # Nor may another workspace send through this workspace's connection.
    response = await app_client.post(
        BROADCASTS,
        json={
            "name": "X",
            "connection_id": connection_id,
            "text": "Hi",
            "contact_ids": people.contact_ids,
        },
        headers=other_workspace.headers(),
    )
    assert response.status_code == 404
    assert (await get(app_client, workspace, broadcast["id"]))["status"] == "pending_approval"


async def test_a_broadcast_not_decided_in_time_expires(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1601, 1602])
    broadcast = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    past = utcnow() - timedelta(seconds=1)
    async with db_session_factory() as session, session.begin():
        await session.execute(update(Broadcast).values(expires_at=past))
        await session.execute(update(OutboundMessage).values(expires_at=past))
    assert (await get(app_client, workspace, broadcast["id"]))["status"] == "expired"
    _, reviewer = await workspace.token(Role.reviewer)
    response = await app_client.post(
        f"{BROADCASTS}/{broadcast['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_pending"
    after = await get(app_client, workspace, broadcast["id"])
    assert after["status"] == "expired"
    assert after["counts"] == only(expired=2)


async def test_deleting_the_connection_cancels_its_broadcasts_unsent_messages(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    people = await seed_recipients(db_session_factory, workspace, connection_id, [1701, 1702])
    pending = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    approved = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    _, reviewer = await workspace.token(Role.reviewer)
    await app_client.post(
        f"{BROADCASTS}/{approved['id']}/approve", headers=workspace.headers(reviewer)
    )
    deleted = await app_client.delete(
        f"/api/v1/connections/{connection_id}", headers=workspace.headers()
    )
    assert deleted.status_code == 200, deleted.text
    for broadcast in (pending, approved):
        after = await get(app_client, workspace, broadcast["id"])
        assert after["status"] == "cancelled"
        assert after["review_reason"] == "connection deleted"
        assert after["counts"] == only(cancelled=2)
    response = await app_client.post(
        BROADCASTS,
        json={
            "name": "Late",
            "connection_id": connection_id,
            "text": "Hi",
            "contact_ids": people.contact_ids,
        },
        headers=workspace.headers(),
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "connection_deleted"


async def test_a_broadcasts_messages_page_by_cursor_and_filter_by_status(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    chats = list(range(2001, 2006))
    people = await seed_recipients(db_session_factory, workspace, connection_id, chats)
    broadcast = await create(app_client, workspace, connection_id, contact_ids=people.contact_ids)
    url = f"{BROADCASTS}/{broadcast['id']}/messages"
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await app_client.get(url, params=params, headers=workspace.headers())).json()
        assert len(page["items"]) <= 2
        seen += [m["chat_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == chats
    # One message cancelled on its own: the filter finds it, the counts show it.
    first = (await messages_of(app_client, workspace, broadcast["id"]))[0]
    cancelled = await app_client.post(
        f"/api/v1/messages/{first['id']}/cancel", headers=workspace.headers()
    )
    assert cancelled.status_code == 200
    assert [
        m["id"] for m in await messages_of(app_client, workspace, broadcast["id"], "cancelled")
    ] == [first["id"]]
    assert len(await messages_of(app_client, workspace, broadcast["id"], "pending_approval")) == 4
    bad = await app_client.get(url, params={"status": "nonsense"}, headers=workspace.headers())
    assert bad.status_code == 422
    after = await get(app_client, workspace, broadcast["id"])
    assert after["counts"] == only(pending_approval=4, cancelled=1)


async def test_ten_thousand_recipients_are_one_broadcast_approved_at_once(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    # PostgreSQL only, to keep the suite short: the SQLite path of the same
    # statements is covered by the spreading test above.
    client = app_client
    _, connection_id = await connect(client, workspace, telegram_double)
    chats = list(range(100_001, 110_001))
    people = await seed_recipients(workspace.session_factory, workspace, connection_id, chats)
    broadcast = await create(client, workspace, connection_id, contact_ids=people.contact_ids)
    assert broadcast["recipient_count"] == 10_000
    assert broadcast["counts"] == only(pending_approval=10_000)
    _, reviewer = await workspace.token(Role.reviewer)
    approved = await client.post(
        f"{BROADCASTS}/{broadcast['id']}/approve", headers=workspace.headers(reviewer)
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["counts"] == only(queued=10_000)
    last = await client.get(
        f"/api/v1/conversations/{people.conversation_ids[-1]}/messages",
        headers=workspace.headers(),
    )
    assert [m["status"] for m in last.json()["items"]] == ["queued"]
