"""Broadcasts: one text to many recipients of a connection, approved once.

The broadcast row holds the request and its one decision; each recipient's
message is an ordinary outbound message (`app.messages`, linked by
`broadcast_id`), which is where sending, progress and failures live.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, StrEnumType, UTCDateTime, new_id, utcnow


class BroadcastDecision(enum.StrEnum):
    """What was decided about the batch (the stored state; see `BroadcastStatus`)."""

    pending_approval = "pending_approval"
    approved = "approved"
    rejected = "rejected"
    cancelled = "cancelled"


class BroadcastStatus(enum.StrEnum):
    """The broadcast's status as the API answers it: its decision, and once approved
    whether anything is left to send."""

    pending_approval = "pending_approval"
    # Nobody decided within APPROVAL_TTL; its messages expired.
    expired = "expired"
    # Approved (or needing no approval): messages are queued or being sent.
    sending = "sending"
    # Approved, and nothing is left to send; the counts say how it went.
    finished = "finished"
    rejected = "rejected"
    cancelled = "cancelled"


class Broadcast(Base):
    __tablename__ = "broadcasts"
    __table_args__ = (
        Index("ix_broadcasts_workspace_created", "workspace_id", "created_at", "id"),
        Index("ix_broadcasts_connection", "connection_id"),
        # One broadcast per idempotency key and workspace, however many requests race.
        Index(
            "uq_broadcasts_idempotency",
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
    name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    parse_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # "contacts" or "conversations": how the recipients were named.
    recipient_kind: Mapped[str] = mapped_column(String(16))
    recipient_count: Mapped[int] = mapped_column(Integer)

    decision: Mapped[BroadcastDecision] = mapped_column(StrEnumType(BroadcastDecision, 20))
    requested_by: Mapped[uuid.UUID] = mapped_column(Uuid)
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Pending beyond this, the broadcast (and each of its messages) has expired.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # SHA-256 of the request body the key was first used with.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
