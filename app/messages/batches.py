"""A broadcast's messages (app.broadcasts), handled as one batch.

Each recipient of a broadcast gets an ordinary outbound message row, linked to
the broadcast (`broadcast_id`) and numbered (`broadcast_position`), so the
dispatcher sends it, the inbox shows it and the message API reads it like any
other. What differs is that a batch is created, decided and counted together:
every function here is a fixed number of statements, however many recipients
the broadcast has (10,000 at most), never one round trip per message.

Spreading: a queued broadcast's messages are not all due at once. Message `n`
is due `n / per_second` seconds after the batch was queued, so the claim (which
takes due messages oldest first) meets at most `per_second` of them a second,
and a connection's ordinary messages, due when they are requested, are claimed
between them instead of after the whole batch. With `per_second` below the
bot's 30 a second the pacer keeps room for them too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_many, new_id
from app.inbox.recording import OutboundShown, record_outbound_many, set_outbound_status
from app.messages.models import MessageStatus
from app.messages.states import MESSAGES, Decision

UNSENT = (MessageStatus.pending_approval, MessageStatus.queued)


@dataclass(frozen=True)
class Recipient:
    """Where one of the batch's messages goes (as `app.messages.service.Address`)."""

    chat_id: int
    conversation_id: uuid.UUID | None
    business_connection_id: str | None = None
    message_thread_id: int | None = None
    direct_messages_topic_id: int | None = None


@dataclass(frozen=True)
class Content:
    """What every message of the batch says, already checked against Telegram's rules."""

    text: str
    parse_mode: str | None
    disable_notification: bool | None
    protect_content: bool | None
    # Telegram's LinkPreviewOptions object, as JSON text.
    link_preview_options: str | None


@dataclass(frozen=True)
class Batch:
    workspace_id: uuid.UUID
    connection_id: uuid.UUID
    broadcast_id: uuid.UUID
    requested_by: uuid.UUID


def spread(start: datetime, position: int, per_second: float) -> datetime:
    """When message `position` of a batch queued at `start` is due."""
    return start + timedelta(microseconds=position * _step_micros(per_second))


def _step_micros(per_second: float) -> int:
    return max(1, round(1_000_000 / per_second))


async def add(
    session: AsyncSession,
    batch: Batch,
    content: Content,
    recipients: Sequence[Recipient],
    *,
    at: datetime,
    expires_at: datetime | None,
    queued_per_second: float | None,
) -> None:
    """One message per recipient, in their order: waiting for approval (`expires_at`),
    or queued and spread at `queued_per_second` when no approval is needed. Messages
    to a known conversation show in it at once, as single messages do."""
    rows: list[dict[str, Any]] = []
    for position, recipient in enumerate(recipients):
        queued = queued_per_second is not None
        rows.append(
            {
                "id": new_id(),
                "workspace_id": batch.workspace_id,
                "connection_id": batch.connection_id,
                "conversation_id": recipient.conversation_id,
                "chat_id": str(recipient.chat_id),
                "business_connection_id": recipient.business_connection_id,
                "message_thread_id": recipient.message_thread_id,
                "direct_messages_topic_id": recipient.direct_messages_topic_id,
                "text": content.text,
                "parse_mode": content.parse_mode,
                "reply_to_message_id": None,
                "disable_notification": content.disable_notification,
                "protect_content": content.protect_content,
                "link_preview_options": content.link_preview_options,
                "status": MessageStatus.queued if queued else MessageStatus.pending_approval,
                "requested_by": batch.requested_by,
                "expires_at": None if queued else expires_at,
                "next_attempt_at": (
                    spread(at, position, queued_per_second)
                    if queued_per_second is not None
                    else None
                ),
                "attempts": 0,
                "pacing_ticket": None,
                "broadcast_id": batch.broadcast_id,
                "broadcast_position": position,
                "created_at": at,
                "updated_at": at,
            }
        )
    await insert_many(session, MESSAGES, rows)
    await record_outbound_many(
        session,
        [
            OutboundShown(
                outbound_message_id=row["id"],
                workspace_id=batch.workspace_id,
                connection_id=batch.connection_id,
                conversation_id=row["conversation_id"],
                text=content.text,
                status=row["status"],
            )
            for row in rows
            if row["conversation_id"] is not None
        ],
        at,
    )


def _of_batch(workspace_id: uuid.UUID, broadcast_id: uuid.UUID) -> ColumnElement[bool]:
    return (MESSAGES.c.workspace_id == workspace_id) & (MESSAGES.c.broadcast_id == broadcast_id)


def _spread_sql(session: AsyncSession, start: datetime, per_second: float) -> Any:
    """`spread()` in SQL, for every row of one UPDATE."""
    step = _step_micros(per_second)
    if session.bind.dialect.name == "postgresql":
        offset = func.make_interval(
            0, 0, 0, 0, 0, 0, cast(MESSAGES.c.broadcast_position * step, BigInteger) / 1e6
        )
        return literal(start, MESSAGES.c.next_attempt_at.type) + offset
    # SQLite keeps times as text in SQLAlchemy's format ("YYYY-MM-DD HH:MM:SS.ffffff",
    # UTC), which is also how the claim compares them: build exactly that text from
    # microseconds since the epoch.
    micros = int(start.timestamp()) * 1_000_000 + start.microsecond
    due = literal(micros) + MESSAGES.c.broadcast_position * step
    return func.strftime("%Y-%m-%d %H:%M:%S", due / 1_000_000, "unixepoch").concat(
        func.printf(".%06d", due % 1_000_000)
    )


async def queue(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    broadcast_id: uuid.UUID,
    decision: Decision,
    per_second: float,
) -> int:
    """Approve the batch: every message still pending becomes queued, spread from
    `decision.at` at `per_second`, in one statement. Returns how many."""
    ids = list(
        (
            await session.execute(
                update(MESSAGES)
                .where(
                    _of_batch(workspace_id, broadcast_id),
                    MESSAGES.c.status == MessageStatus.pending_approval,
                )
                .values(
                    status=MessageStatus.queued,
                    reviewed_by=decision.actor_token_id,
                    next_attempt_at=_spread_sql(session, decision.at, per_second),
                    updated_at=decision.at,
                )
                .returning(MESSAGES.c.id)
            )
        ).scalars()
    )
    await set_outbound_status(session, ids, MessageStatus.queued)
    return len(ids)


async def end(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    broadcast_id: uuid.UUID,
    to: MessageStatus,
    decision: Decision,
) -> int:
    """Reject (`to=rejected`: the pending messages) or cancel (`to=cancelled`: the
    pending and queued ones) the batch in one statement; a message being sent or
    already sent is left alone. Returns how many."""
    allowed = [MessageStatus.pending_approval] if to == MessageStatus.rejected else list(UNSENT)
    values: dict[str, Any] = {"status": to, "updated_at": decision.at}
    if to == MessageStatus.rejected:
        values.update(reviewed_by=decision.actor_token_id, review_reason=decision.reason)
    ids = list(
        (
            await session.execute(
                update(MESSAGES)
                .where(_of_batch(workspace_id, broadcast_id), MESSAGES.c.status.in_(allowed))
                .values(**values)
                .returning(MESSAGES.c.id)
            )
        ).scalars()
    )
    await set_outbound_status(session, ids, to)
    return len(ids)


async def counts(
    session: AsyncSession, workspace_id: uuid.UUID, broadcast_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[MessageStatus, int]]:
    """Each batch's messages by status (one grouped query for all of them)."""
    found: dict[uuid.UUID, dict[MessageStatus, int]] = {b: {} for b in broadcast_ids}
    if not broadcast_ids:
        return found
    stmt = (
        select(MESSAGES.c.broadcast_id, MESSAGES.c.status, func.count())
        .where(
            MESSAGES.c.workspace_id == workspace_id,
            MESSAGES.c.broadcast_id.in_(list(broadcast_ids)),
        )
        .group_by(MESSAGES.c.broadcast_id, MESSAGES.c.status)
    )
    for broadcast_id, status, count in await session.execute(stmt):
        found[broadcast_id][MessageStatus(status)] = count
    return found
