"""The outbound message state machine (SPEC section 7), in one place.

    pending_approval -> queued -> sending -> sent | failed
    pending_approval -> rejected | expired | cancelled
    queued -> cancelled
    sending -> queued        (deferred: paced, rate limited, retried after an error)

Every transition is one conditional UPDATE (`WHERE status = <from>`), so of two
reviewers, or two workers, racing on one message exactly one wins; the loser's
update matches no row. Each transition also writes its audit row and tells the
inbox the new status, in the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Row,
    Table,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.audit.repository import record, record_many
from app.db import utcnow
from app.inbox.recording import set_outbound_status
from app.messages.models import MessageStatus, OutboundMessage

MESSAGES: Table = OutboundMessage.__table__  # type: ignore[assignment]
Executor = AsyncSession | AsyncConnection


@dataclass(frozen=True)
class Decision:
    """Who decided what about a message, for its audit row."""

    actor_token_id: uuid.UUID | None
    at: datetime
    reason: str | None = None


async def _move(
    executor: Executor,
    message_id: uuid.UUID,
    workspace_id: uuid.UUID,
    allowed_from: Sequence[MessageStatus],
    to: MessageStatus,
    action: str,
    decision: Decision,
    **values: Any,
) -> bool:
    """One conditional transition; True if this caller won it."""
    stmt = (
        update(MESSAGES)
        .where(
            MESSAGES.c.id == message_id,
            MESSAGES.c.workspace_id == workspace_id,
            MESSAGES.c.status.in_(list(allowed_from)),
        )
        .values(status=to, updated_at=decision.at, **values)
    )
    if (await executor.execute(stmt)).rowcount != 1:  # type: ignore[attr-defined]
        return False
    await record(
        executor,
        workspace_id=workspace_id,
        action=action,
        message_id=message_id,
        actor_token_id=decision.actor_token_id,
        at=decision.at,
        reason=decision.reason,
    )
    await set_outbound_status(executor, [message_id], to)
    return True


async def approve(
    executor: Executor, workspace_id: uuid.UUID, message_id: uuid.UUID, decision: Decision
) -> bool:
    """pending_approval -> queued, due at once; never once it has expired."""
    stmt_guard = or_(MESSAGES.c.expires_at.is_(None), MESSAGES.c.expires_at > decision.at)
    stmt = (
        update(MESSAGES)
        .where(
            MESSAGES.c.id == message_id,
            MESSAGES.c.workspace_id == workspace_id,
            MESSAGES.c.status == MessageStatus.pending_approval,
            stmt_guard,
        )
        .values(
            status=MessageStatus.queued,
            reviewed_by=decision.actor_token_id,
            next_attempt_at=decision.at,
            updated_at=decision.at,
        )
    )
    if (await executor.execute(stmt)).rowcount != 1:  # type: ignore[attr-defined]
        return False
    await record(
        executor,
        workspace_id=workspace_id,
        action="approved",
        message_id=message_id,
        actor_token_id=decision.actor_token_id,
        at=decision.at,
    )
    await set_outbound_status(executor, [message_id], MessageStatus.queued)
    return True


async def reject(
    executor: Executor, workspace_id: uuid.UUID, message_id: uuid.UUID, decision: Decision
) -> bool:
    return await _move(
        executor,
        message_id,
        workspace_id,
        [MessageStatus.pending_approval],
        MessageStatus.rejected,
        "rejected",
        decision,
        reviewed_by=decision.actor_token_id,
        review_reason=decision.reason,
    )


async def cancel(
    executor: Executor, workspace_id: uuid.UUID, message_id: uuid.UUID, decision: Decision
) -> bool:
    return await _move(
        executor,
        message_id,
        workspace_id,
        [MessageStatus.pending_approval, MessageStatus.queued],
        MessageStatus.cancelled,
        "cancelled",
        decision,
    )


async def _move_many(
    executor: Executor,
    where: ColumnElement[bool],
    to: MessageStatus,
    action: str,
    decision: Decision,
    reason: str | None = None,
) -> list[uuid.UUID]:
    """A transition for every row matching `where`; returns their ids."""
    stmt = (
        update(MESSAGES)
        .where(where)
        .values(status=to, updated_at=decision.at)
        .returning(MESSAGES.c.id, MESSAGES.c.workspace_id)
    )
    rows = (await executor.execute(stmt)).all()
    await record_many(
        executor,
        [
            {
                "workspace_id": row.workspace_id,
                "actor_token_id": decision.actor_token_id,
                "action": action,
                "message_id": row.id,
                "reason": reason,
                "created_at": decision.at,
            }
            for row in rows
        ],
    )
    ids = [row.id for row in rows]
    await set_outbound_status(executor, ids, to)
    return ids


async def expire_due(executor: Executor, now: datetime) -> list[uuid.UUID]:
    """pending_approval -> expired for every message whose approval window ended."""
    return await _move_many(
        executor,
        and_(
            MESSAGES.c.status == MessageStatus.pending_approval,
            MESSAGES.c.expires_at <= now,
        ),
        MessageStatus.expired,
        "expired",
        Decision(actor_token_id=None, at=now),
    )


async def cancel_for_connection(
    executor: Executor, connection_id: uuid.UUID, decision: Decision
) -> list[uuid.UUID]:
    """A deleted connection: its pending and queued messages are cancelled."""
    return await _move_many(
        executor,
        and_(
            MESSAGES.c.connection_id == connection_id,
            MESSAGES.c.status.in_([MessageStatus.pending_approval, MessageStatus.queued]),
        ),
        MessageStatus.cancelled,
        "cancelled",
        decision,
        reason="connection deleted",
    )


# -- the dispatcher's transitions ---------------------------------------------------


def _lease_ran_out(now: datetime) -> ColumnElement[bool]:
    """Sending messages whose worker's lease ran out (it died, or lost its database)."""
    return and_(MESSAGES.c.status == MessageStatus.sending, MESSAGES.c.lease_until < now)


def _due(due_by: datetime) -> ColumnElement[bool]:
    return and_(MESSAGES.c.status == MessageStatus.queued, MESSAGES.c.next_attempt_at <= due_by)


def _due_holding_a_ticket(due_by: datetime) -> ColumnElement[bool]:
    # `pacing_ticket IS NOT NULL` is written out, not bound: it selects the partial
    # index `ix_outbound_messages_ticket_due`.
    return and_(_due(due_by), MESSAGES.c.pacing_ticket.is_not(None))


# What a worker needs of a claimed message to send it and record what happened: not
# the whole row (its review, its key, its timestamps), whose columns cost the worker
# a conversion each.
CLAIMED_COLUMNS = [
    MESSAGES.c[name]
    for name in (
        "id",
        "workspace_id",
        "connection_id",
        "conversation_id",
        "chat_id",
        "business_connection_id",
        "message_thread_id",
        "direct_messages_topic_id",
        "text",
        "parse_mode",
        "reply_to_message_id",
        "disable_notification",
        "protect_content",
        "link_preview_options",
        "attempts",
        "next_attempt_at",
        "pacing_ticket",
        "created_at",
    )
]


async def claim(
    connection: AsyncConnection,
    *,
    owner: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    due_by: datetime | None = None,
    paused_connections: ColumnElement[bool] | None = None,
) -> Sequence[Row[Any]]:
    """queued (due by `due_by`, default now) or lease-expired sending -> sending
    under `owner`'s lease; returns each one's `CLAIMED_COLUMNS`, in the order the
    pacer is to see them (`_claim_order`).

    Up to `limit` messages, taken in three steps, each one statement: messages
    whose worker's lease ran out (first, so a backlog never holds them back), then
    queued messages that hold a ticket in their chat's order (they are the sends
    due now, while a new message only needs its ticket), then the rest that are
    due, oldest due first and, among messages due at once, in the order they were
    requested, so a chat's messages reach the pacer (and Telegram) in order. Each
    step reads its index in that order and stops at its limit: a claim costs what
    it takes, not what waits (one statement sorting every due message cost a
    backlog of 20,000 a 30 ms scan per claim).

    On PostgreSQL the candidates are locked with SKIP LOCKED, so concurrent
    workers claim disjoint rows without waiting on each other; on SQLite each
    statement is atomic under the database's single writer lock.
    """
    due_by = now if due_by is None else due_by
    by_due = (MESSAGES.c.next_attempt_at, MESSAGES.c.created_at, MESSAGES.c.id)
    steps: list[tuple[ColumnElement[bool], tuple[Any, ...]]] = [
        (_lease_ran_out(now), (MESSAGES.c.lease_until,)),
        (_due_holding_a_ticket(due_by), by_due),
        (_due(due_by), by_due),
    ]
    values = {
        "status": MessageStatus.sending,
        "lease_owner": owner,
        "lease_until": lease_until,
        "updated_at": now,
    }
    claimed: list[Row[Any]] = []
    for claimable, order in steps:
        if len(claimed) >= limit:
            break
        candidates = select(MESSAGES.c.id).where(claimable).order_by(*order)
        candidates = candidates.limit(limit - len(claimed))
        if paused_connections is not None:
            candidates = candidates.where(~paused_connections)
        picked: Any = candidates.scalar_subquery()
        chosen: Any = MESSAGES.c.id.in_(picked)
        if connection.dialect.name == "postgresql":
            # A materialized CTE: the candidates are chosen once. As `IN (subquery)`
            # the planner may scan the subquery again while it updates, and each
            # rescan skips the rows this statement has already changed, so the LIMIT
            # kept choosing more: one claim took every due message, whatever `limit`
            # said. `= ANY(ARRAY(...))` has each chosen row found by its key, where a
            # join with the CTE had the planner scan the whole table.
            cte = (
                candidates.with_for_update(skip_locked=True)
                .cte("picked")
                .prefix_with("MATERIALIZED")
            )
            chosen = MESSAGES.c.id == any_(func.array(select(cte.c.id).scalar_subquery()))
        stmt = update(MESSAGES).where(chosen, claimable).values(values).returning(*CLAIMED_COLUMNS)
        claimed += (await connection.execute(stmt)).all()
    # RETURNING comes in the order rows were updated, which is the table's physical
    # order, not the candidates': the pacer decides in the order it is given, so a
    # chat's messages would otherwise go out of order.
    return sorted(claimed, key=_claim_order)


def _claim_order(row: Row[Any]) -> tuple[bool, datetime, datetime, uuid.UUID]:
    """The candidates' order (see `claim`): ticket holders first, then due first."""
    due = row.next_attempt_at or row.created_at
    return (row.pacing_ticket is None, due, row.created_at, row.id)


def _held(message_id: uuid.UUID, owner: str) -> ColumnElement[bool]:
    return and_(
        MESSAGES.c.id == message_id,
        MESSAGES.c.status == MessageStatus.sending,
        MESSAGES.c.lease_owner == owner,
    )


@dataclass(frozen=True)
class Sent:
    """A message Telegram accepted: its Telegram id, and for a message sent by chat
    id the conversation of the chat Telegram answered with (None keeps the one the
    message has: a migration may have moved it since the claim)."""

    message_id: uuid.UUID
    telegram_message_id: int
    conversation_id: uuid.UUID | None


async def mark_sent(
    connection: AsyncConnection, owner: str, sent: Sequence[Sent], at: datetime
) -> set[uuid.UUID]:
    """sending -> sent for each message still under `owner`'s lease, with its
    Telegram id and conversation; returns those. One whose lease ran out is another
    worker's to record."""
    if not sent:
        return set()
    if connection.dialect.name == "postgresql":
        rows = await connection.exec_driver_sql(
            _MARK_SENT_POSTGRES,
            (
                [item.message_id for item in sent],
                [item.telegram_message_id for item in sent],
                at,
                owner,
                [item.conversation_id for item in sent],
            ),
        )
        return {row[0] for row in rows}
    held = set(
        (
            await connection.execute(
                update(MESSAGES)
                .where(
                    MESSAGES.c.id.in_([item.message_id for item in sent]),
                    MESSAGES.c.status == MessageStatus.sending,
                    MESSAGES.c.lease_owner == owner,
                )
                .values(
                    status=MessageStatus.sent,
                    sent_at=at,
                    attempts=MESSAGES.c.attempts + 1,
                    last_error=None,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=at,
                )
                .returning(MESSAGES.c.id)
            )
        ).scalars()
    )
    if held:
        # Each row its own Telegram id and conversation: one statement, executed
        # for every row.
        await connection.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == bindparam("m_id"))
            .values(
                telegram_message_id=bindparam("m_telegram_id"),
                conversation_id=func.coalesce(
                    bindparam("m_conversation_id", type_=MESSAGES.c.conversation_id.type),
                    MESSAGES.c.conversation_id,
                ),
            ),
            [
                {
                    "m_id": item.message_id,
                    "m_telegram_id": item.telegram_message_id,
                    "m_conversation_id": item.conversation_id,
                }
                for item in sent
                if item.message_id in held
            ],
        )
    return held


# On PostgreSQL a batch is one statement whatever its size: one array per column
# (unnest), so the text is fixed and prepared once per connection, and the server
# runs one update instead of one per message (the dispatcher's busiest write).
_MARK_SENT_POSTGRES = """
UPDATE outbound_messages AS m SET
    status = 'sent', telegram_message_id = v.telegram_message_id, sent_at = $3,
    attempts = m.attempts + 1, last_error = NULL, lease_owner = NULL, lease_until = NULL,
    conversation_id = COALESCE(v.conversation_id, m.conversation_id), updated_at = $3
FROM unnest($1::uuid[], $2::bigint[], $5::uuid[]) AS v(id, telegram_message_id, conversation_id)
WHERE m.id = v.id AND m.status = 'sending' AND m.lease_owner = $4
RETURNING m.id
"""


async def mark_failed(
    connection: AsyncConnection, message_id: uuid.UUID, owner: str, error: str, at: datetime
) -> bool:
    stmt = (
        update(MESSAGES)
        .where(_held(message_id, owner))
        .values(
            status=MessageStatus.failed,
            attempts=MESSAGES.c.attempts + 1,
            last_error=error,
            lease_owner=None,
            lease_until=None,
            updated_at=at,
        )
    )
    return bool((await connection.execute(stmt)).rowcount)


@dataclass(frozen=True)
class Deferral:
    """A claimed message goes back to the queue, due at `until`.

    `attempted` counts a failed attempt (5xx, network), not a wait for pacing or
    for Telegram's rate limit; `error` replaces `last_error` when given;
    `ticket` is the pacer's ticket for it in its chat's order (None keeps the one
    it has, if any).
    """

    message_id: uuid.UUID
    until: datetime
    attempted: bool = False
    error: str | None = None
    ticket: int | None = None


async def defer(
    connection: AsyncConnection, owner: str, deferrals: Sequence[Deferral], at: datetime
) -> None:
    """sending -> queued for each deferral still under `owner`'s lease (one statement:
    on PostgreSQL over arrays of the deferrals, elsewhere executed for every row)."""
    if not deferrals:
        return
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql(
            _DEFER_POSTGRES,
            (
                [item.message_id for item in deferrals],
                [item.until for item in deferrals],
                [1 if item.attempted else 0 for item in deferrals],
                [item.error for item in deferrals],
                [item.ticket for item in deferrals],
                at,
                owner,
            ),
        )
        return
    stmt = (
        update(MESSAGES)
        .where(
            MESSAGES.c.id == bindparam("m_id"),
            MESSAGES.c.status == MessageStatus.sending,
            MESSAGES.c.lease_owner == owner,
        )
        .values(
            status=MessageStatus.queued,
            next_attempt_at=bindparam("m_until", type_=MESSAGES.c.next_attempt_at.type),
            attempts=MESSAGES.c.attempts + bindparam("m_attempted", type_=Integer),
            last_error=func.coalesce(
                bindparam("m_error", type_=MESSAGES.c.last_error.type), MESSAGES.c.last_error
            ),
            pacing_ticket=func.coalesce(
                bindparam("m_ticket", type_=BigInteger), MESSAGES.c.pacing_ticket
            ),
            lease_owner=None,
            lease_until=None,
            updated_at=at,
        )
    )
    await connection.execute(
        stmt,
        [
            {
                "m_id": item.message_id,
                "m_until": item.until,
                "m_attempted": 1 if item.attempted else 0,
                "m_error": item.error,
                "m_ticket": item.ticket,
            }
            for item in deferrals
        ],
    )


_DEFER_POSTGRES = """
UPDATE outbound_messages AS m SET
    status = 'queued', next_attempt_at = v.until, attempts = m.attempts + v.attempted,
    last_error = COALESCE(v.error, m.last_error),
    pacing_ticket = COALESCE(v.ticket, m.pacing_ticket),
    lease_owner = NULL, lease_until = NULL, updated_at = $6
FROM unnest($1::uuid[], $2::timestamptz[], $3::int[], $4::text[], $5::bigint[])
    AS v(id, until, attempted, error, ticket)
WHERE m.id = v.id AND m.status = 'sending' AND m.lease_owner = $7
"""


async def release_claims(connection: AsyncConnection, owner: str, at: datetime) -> int:
    """sending -> queued, due at `at`, for every message still under `owner`'s lease:
    a worker stopping puts back what it will not finish, rather than leave it to wait
    out its lease. Attempts are not counted. Returns how many were released."""
    stmt = (
        update(MESSAGES)
        .where(MESSAGES.c.status == MessageStatus.sending, MESSAGES.c.lease_owner == owner)
        .values(
            status=MessageStatus.queued,
            next_attempt_at=at,
            lease_owner=None,
            lease_until=None,
            updated_at=at,
        )
    )
    return int((await connection.execute(stmt)).rowcount)


async def cancel_unsent_of_deleted_connection(
    session: AsyncSession, connection_id: uuid.UUID, actor_token_id: uuid.UUID
) -> None:
    """The connections domain's delete hook (SPEC section 4: unsent messages are cancelled)."""
    await cancel_for_connection(
        session, connection_id, Decision(actor_token_id=actor_token_id, at=utcnow())
    )


async def move_chat(
    connection: AsyncConnection,
    connection_id: uuid.UUID,
    old_chat_id: int,
    new_chat_id: int,
    conversation_id: uuid.UUID | None,
) -> None:
    """Every unsent message to a group that became a supergroup goes to its new id."""
    values: dict[str, Any] = {"chat_id": str(new_chat_id)}
    if conversation_id is not None:
        values["conversation_id"] = conversation_id
    await connection.execute(
        update(MESSAGES)
        .where(
            MESSAGES.c.connection_id == connection_id,
            MESSAGES.c.chat_id == str(old_chat_id),
            MESSAGES.c.status.in_(
                [MessageStatus.pending_approval, MessageStatus.queued, MessageStatus.sending]
            ),
        )
        .values(**values)
    )
