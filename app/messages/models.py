"""Outbound messages: one row per message, which is also its place in the queue.

The row is the state machine (`app.messages.states`): `pending_approval`,
`queued`, `sending` (claimed by a worker, under a lease), and the ends `sent`,
`failed`, `rejected`, `expired`, `cancelled`. The dispatcher's queue is this
table: due rows are `queued` with `next_attempt_at` in the past.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, StrEnumType, UTCDateTime, new_id, utcnow


class MessageStatus(enum.StrEnum):
    pending_approval = "pending_approval"
    queued = "queued"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    rejected = "rejected"
    expired = "expired"
    cancelled = "cancelled"


FINAL_STATUSES = frozenset(
    {
        MessageStatus.sent,
        MessageStatus.failed,
        MessageStatus.rejected,
        MessageStatus.expired,
        MessageStatus.cancelled,
    }
)


class OutboundMessage(Base):
    __tablename__ = "outbound_messages"
    __table_args__ = (
        # The dispatcher's claim (app.messages.states.claim), each step reading its
        # index in its order up to its limit: due queued rows, oldest due first (and
        # in the order they were requested); those holding a ticket (a few among
        # many); sending rows whose lease ran out.
        Index("ix_outbound_messages_due", "status", "next_attempt_at", "created_at", "id"),
        Index(
            "ix_outbound_messages_ticket_due",
            "status",
            "next_attempt_at",
            "created_at",
            "id",
            postgresql_where=text("pacing_ticket IS NOT NULL"),
            sqlite_where=text("pacing_ticket IS NOT NULL"),
        ),
        Index("ix_outbound_messages_lease", "status", "lease_until"),
        Index("ix_outbound_messages_workspace_created", "workspace_id", "created_at", "id"),
        Index("ix_outbound_messages_connection_status", "connection_id", "status"),
        # A broadcast's messages, in their order (app.messages.batches).
        Index("ix_outbound_messages_broadcast", "broadcast_id", "broadcast_position"),
        # One message per idempotency key and workspace, however many requests race.
        Index(
            "uq_outbound_messages_idempotency",
            "workspace_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("telegram_connections.id", ondelete="CASCADE")
    )
    # Known when the message was addressed to a conversation (or its chat had one).
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    # Telegram's chat_id as given: an integer, or "@channelusername".
    chat_id: Mapped[str] = mapped_column(String(64))
    business_connection_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    message_thread_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    direct_messages_topic_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    text: Mapped[str] = mapped_column(Text)
    parse_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reply_to_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disable_notification: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    protect_content: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Telegram's LinkPreviewOptions object, as JSON text.
    link_preview_options: Mapped[str | None] = mapped_column(Text, nullable=True)

    status: Mapped[MessageStatus] = mapped_column(StrEnumType(MessageStatus, 20))
    requested_by: Mapped[uuid.UUID] = mapped_column(Uuid)
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A pending message not decided by then expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The message's ticket in its chat's order (app.messages.pacing): when it is due
    # again it keeps its turn rather than queue behind later messages.
    pacing_ticket: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The worker that claimed a `sending` row, and until when; an expired lease is
    # claimed again (its worker died).
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # The broadcast the message belongs to (app.broadcasts), and its place among the
    # broadcast's recipients (0, 1, ...): approval spreads the sends by it.
    broadcast_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("broadcasts.id", ondelete="CASCADE"), nullable=True
    )
    broadcast_position: Mapped[int | None] = mapped_column(Integer, nullable=True)

    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # SHA-256 of the request body the key was first used with.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def telegram_chat_id(stored: str) -> int | str:
    """A stored `chat_id` as Telegram takes it: an integer, or "@channelusername"."""
    return stored if stored.startswith("@") else int(stored)
