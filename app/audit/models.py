"""The audit trail: every decision on, and lifecycle change of, an outbound message
or a broadcast (`app.broadcasts`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, new_id, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_workspace_created", "workspace_id", "created_at", "id"),
        Index("ix_audit_events_message", "message_id"),
        Index("ix_audit_events_broadcast", "broadcast_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    # The API token that acted; None for the service itself (the worker, expiry).
    actor_token_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # Set on a broadcast's own events (requested, approved, rejected, cancelled).
    broadcast_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
