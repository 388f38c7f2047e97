"""`states.claim` on PostgreSQL: a claim takes at most `limit` messages; and
`states.defer`, `states.mark_sent` and the claim's order, on both backends."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import utcnow
from app.inbox.recording import SentOutbound, conversation_for_chat, open_conversations
from app.messages import states
from app.messages.models import MessageStatus
from tests.conftest import BackendApp, WorkspaceFixture
from tests.messages.test_dispatcher import connect, request
from tests.telegram_double.double import TelegramDouble


async def test_a_claim_takes_no_more_than_its_limit_and_the_next_takes_the_rest(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
) -> None:
    _, connection_id = await connect(app_client, workspace, telegram_double)
    for n in range(5):
        await request(app_client, workspace, connection_id, chat_id=700 + n, text=f"m{n}")
    now = utcnow()
    lease = now + timedelta(minutes=1)
    async with db_engine.begin() as connection:
        first = await states.claim(connection, owner="a", now=now, lease_until=lease, limit=2)
    async with db_engine.begin() as connection:
        second = await states.claim(connection, owner="b", now=now, lease_until=lease, limit=10)
        queued = await connection.scalar(
            select(func.count()).where(states.MESSAGES.c.status == MessageStatus.queued)
        )
    assert len(first) == 2
    assert len(second) == 3
    assert not {row.id for row in first} & {row.id for row in second}
    assert queued == 0


async def test_deferring_puts_claimed_messages_back_with_what_each_deferral_says(
    backend_app: BackendApp, telegram_double: TelegramDouble
) -> None:
    client, workspace = backend_app.client, backend_app.workspace
    _, connection_id = await connect(client, workspace, telegram_double)
    for n in range(4):
        await request(client, workspace, connection_id, chat_id=800, text=f"m{n}")
    now = utcnow()
    async with backend_app.engine.begin() as connection:
        claimed = await states.claim(
            connection, owner="a", now=now, lease_until=now + timedelta(minutes=1), limit=3
        )
    paced, failed, kept = sorted(claimed, key=lambda row: row.text)
    later = now + timedelta(seconds=30)
    async with backend_app.engine.begin() as connection:
        await states.defer(
            connection,
            "a",
            [
                states.Deferral(paced.id, later, ticket=41),
                states.Deferral(failed.id, later, attempted=True, error="Bad Gateway"),
                states.Deferral(kept.id, later, ticket=None),
            ],
            now,
        )
        # Not this owner's: untouched.
        await states.defer(connection, "b", [states.Deferral(kept.id, now, ticket=7)], now)
        rows = {
            row.id: row
            for row in (
                await connection.execute(
                    select(states.MESSAGES).where(
                        states.MESSAGES.c.id.in_([paced.id, failed.id, kept.id])
                    )
                )
            ).all()
        }
    assert {row.status for row in rows.values()} == {MessageStatus.queued}
    assert all(row.next_attempt_at == later for row in rows.values())
    assert all(row.lease_owner is None and row.lease_until is None for row in rows.values())
    assert (rows[paced.id].pacing_ticket, rows[paced.id].attempts) == (41, 0)
    assert (rows[failed.id].attempts, rows[failed.id].last_error) == (1, "Bad Gateway")
    assert rows[failed.id].pacing_ticket is None
    assert (rows[kept.id].pacing_ticket, rows[kept.id].last_error) == (None, None)
    # A later deferral without a ticket keeps the one the message has.
    async with backend_app.engine.begin() as connection:
        [again] = await states.claim(
            connection, owner="c", now=later, lease_until=later + timedelta(minutes=1), limit=1
        )
        await states.defer(connection, "c", [states.Deferral(again.id, later)], later)
        ticket = await connection.scalar(
            select(states.MESSAGES.c.pacing_ticket).where(states.MESSAGES.c.id == again.id)
        )
    assert again.id == paced.id and ticket == 41


async def test_a_claim_returns_its_messages_in_the_order_they_are_due(
    backend_app: BackendApp, telegram_double: TelegramDouble
) -> None:
    """Ticket holders first, then the earliest due, whatever order the rows lie in
    (the pacer decides in the order it is given: a chat's messages keep theirs)."""
    client, workspace = backend_app.client, backend_app.workspace
    _, connection_id = await connect(client, workspace, telegram_double)
    ids = [
        (await request(client, workspace, connection_id, chat_id=900, text=f"m{n}"))["id"]
        for n in range(5)
    ]
    now = utcnow()
    # Due in the opposite order of creation, and the last-created holds a ticket.
    async with backend_app.engine.begin() as connection:
        for n, message_id in enumerate(ids):
            await connection.execute(
                update(states.MESSAGES)
                .where(states.MESSAGES.c.id == uuid.UUID(message_id))
                .values(
                    next_attempt_at=now - timedelta(seconds=n),
                    pacing_ticket=7 if n == 4 else None,
                )
            )
        claimed = await states.claim(
            connection, owner="a", now=now, lease_until=now + timedelta(minutes=1), limit=10
        )
    assert [row.text for row in claimed] == ["m4", "m3", "m2", "m1", "m0"]


async def test_marking_sent_sets_the_conversation_only_where_one_is_given(
    backend_app: BackendApp, telegram_double: TelegramDouble
) -> None:
    """A message sent by chat id gets its chat's conversation; one given none (it
    was addressed by conversation) keeps the conversation it has."""
    client, workspace = backend_app.client, backend_app.workspace
    _, connection = await connect(client, workspace, telegram_double)
    connection_id = uuid.UUID(connection)
    for chat_id in (950, 951):
        await request(client, workspace, connection, chat_id=chat_id, text=f"to {chat_id}")
    now = utcnow()
    async with backend_app.engine.begin() as connection:
        claimed = await states.claim(
            connection, owner="a", now=now, lease_until=now + timedelta(minutes=1), limit=2
        )
        by_chat, by_conversation = sorted(claimed, key=lambda row: row.chat_id)
        await open_conversations(
            connection,
            [
                SentOutbound(
                    row.id, row.workspace_id, connection_id, None, int(row.chat_id),
                    conversation_for_chat(connection_id, int(row.chat_id)), "private",
                    None, 1, row.text, now,
                )
                for row in claimed
            ],
        )  # fmt: skip
        kept = conversation_for_chat(connection_id, 951)
        await connection.execute(
            update(states.MESSAGES)
            .where(states.MESSAGES.c.id == by_conversation.id)
            .values(conversation_id=kept)
        )
        marked = await states.mark_sent(
            connection,
            "a",
            [
                states.Sent(by_chat.id, 11, conversation_for_chat(connection_id, 950)),
                states.Sent(by_conversation.id, 12, None),
            ],
            now,
        )
        rows = {
            row.id: row
            for row in (
                await connection.execute(
                    select(states.MESSAGES).where(states.MESSAGES.c.id.in_(marked))
                )
            ).all()
        }
    assert marked == {by_chat.id, by_conversation.id}
    assert {row.status for row in rows.values()} == {MessageStatus.sent}
    assert rows[by_chat.id].conversation_id == conversation_for_chat(connection_id, 950)
    assert rows[by_chat.id].telegram_message_id == 11
    assert rows[by_conversation.id].conversation_id == kept
    assert rows[by_conversation.id].telegram_message_id == 12


async def test_a_claim_takes_expired_leases_then_ticket_holders_ahead_of_a_backlog(
    backend_app: BackendApp, telegram_double: TelegramDouble
) -> None:
    """A backlog larger than the claim's limit never holds back a message whose
    worker died, nor one whose turn in its chat has come."""
    client, workspace = backend_app.client, backend_app.workspace
    _, connection_id = await connect(client, workspace, telegram_double)
    ids = [
        uuid.UUID(
            (await request(client, workspace, connection_id, chat_id=960, text=f"m{n}"))["id"]
        )
        for n in range(6)
    ]
    now = utcnow()
    async with backend_app.engine.begin() as connection:
        # m0..m3: a backlog due a minute ago; m4 holds a ticket, due just now; m5 was
        # being sent by a worker whose lease ran out a moment ago.
        await connection.execute(
            update(states.MESSAGES)
            .where(states.MESSAGES.c.id.in_(ids[:4]))
            .values(next_attempt_at=now - timedelta(minutes=1))
        )
        await connection.execute(
            update(states.MESSAGES)
            .where(states.MESSAGES.c.id == ids[4])
            .values(next_attempt_at=now, pacing_ticket=3)
        )
        await connection.execute(
            update(states.MESSAGES)
            .where(states.MESSAGES.c.id == ids[5])
            .values(
                status=MessageStatus.sending,
                lease_owner="gone",
                lease_until=now - timedelta(seconds=1),
                next_attempt_at=now,
            )
        )
        claimed = await states.claim(
            connection, owner="a", now=now, lease_until=now + timedelta(minutes=1), limit=3
        )
    assert {row.text for row in claimed} == {"m5", "m4", "m0"}
    # The pacer sees the ticket holder first, then the rest by when each was due.
    assert [row.text for row in claimed] == ["m4", "m0", "m5"]


async def test_a_claim_reads_its_indexes_in_order_and_never_sorts_the_queue(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_engine: AsyncEngine,
) -> None:
    """Each of a claim's statements finds its rows by an index read in the claim's
    order up to its limit: sorting every due message made a claim's cost grow with
    the backlog (30 ms a claim with 20,000 waiting)."""
    _, connection_id = await connect(app_client, workspace, telegram_double)
    template = await request(app_client, workspace, connection_id, chat_id=970, text="backlog")
    now = utcnow()
    async with db_engine.begin() as connection:
        # A backlog of 3,000 copies of the message, due one after another, one in
        # a hundred holding a ticket.
        copied = {
            "id": "(md5(random()::text || n))::uuid",
            "next_attempt_at": "next_attempt_at - n * interval '1 ms'",
            "pacing_ticket": "CASE WHEN n % 100 = 0 THEN n END",
            "idempotency_key": "NULL",
            "request_fingerprint": "NULL",
        }
        names = [column.name for column in states.MESSAGES.c]
        await connection.execute(
            text(
                f"INSERT INTO outbound_messages ({', '.join(names)}) "
                f"SELECT {', '.join(copied.get(name, name) for name in names)} "
                "FROM outbound_messages, generate_series(1, 3000) AS n WHERE id = :id"
            ),
            {"id": uuid.UUID(template["id"])},
        )
        await connection.execute(text("ANALYZE outbound_messages"))
    statements: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(db_engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with db_engine.begin() as connection:
            claimed = await states.claim(
                connection, owner="a", now=now, lease_until=now + timedelta(minutes=1), limit=80
            )
    finally:
        event.remove(db_engine.sync_engine, "before_cursor_execute", capture)
    # The 30 ticket holders, then 50 more: all three steps ran.
    assert len(claimed) == 80 and len(statements) == 3
    assert sum(row.pacing_ticket is not None for row in claimed) == 30
    plans = []
    async with db_engine.begin() as connection:
        for statement, parameters in statements:
            explained = await connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            plans.append("\n".join(row[0] for row in explained))
    # No step reads the whole table; the backlog's step reads its index in order up
    # to its limit (a few ticket holders may be sorted: no more than the limit).
    assert all("Seq Scan on outbound_messages" not in plan for plan in plans), plans
    assert "ix_outbound_messages_due" in plans[2] and "Sort" not in plans[2], plans[2]
