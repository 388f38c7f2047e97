"""Telegram connections: one bot per row, its credentials sealed by the vault."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Table, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, StrEnumType, UTCDateTime, new_id, utcnow
from app.vault import (
    SealedField,
    SealedSecret,
    SealedSecretType,
    SecretContext,
    lookup_hash_info,
    sealed_fields,
)


class ConnectionStatus(enum.StrEnum):
    active = "active"
    # Telegram rejects the token, or the webhook points somewhere else.
    action_required = "action_required"
    # Telegram reports recent delivery errors.
    degraded = "degraded"


class ConnectionMode(enum.StrEnum):
    webhook = "webhook"
    polling = "polling"


class ApprovalMode(enum.StrEnum):
    required = "required"
    none = "none"


class TelegramConnection(Base):
    """A workspace's Telegram bot.

    The bot token, webhook secret and webhook key are stored only as vault
    ciphertexts bound to this row; the secret and key also as keyed lookup hashes,
    so the webhook hot path finds and verifies a request without decrypting.
    A deleted connection keeps its row (history refers to it) with every
    credential destroyed; the partial unique index on `bot_id` covers live rows
    only, so the bot can be connected again afterwards.
    """

    __tablename__ = "telegram_connections"
    __table_args__ = (
        Index(
            "uq_telegram_connections_live_bot_id",
            "bot_id",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[ConnectionStatus] = mapped_column(
        StrEnumType(ConnectionStatus, 32), default=ConnectionStatus.active
    )
    status_hint: Mapped[str | None] = mapped_column(Text, nullable=True)
    mode: Mapped[ConnectionMode] = mapped_column(StrEnumType(ConnectionMode, 16))
    approval_mode: Mapped[ApprovalMode] = mapped_column(
        StrEnumType(ApprovalMode, 16), default=ApprovalMode.required
    )
    daily_limit: Mapped[int] = mapped_column(Integer, default=1000)

    bot_id: Mapped[int] = mapped_column(BigInteger)
    bot_username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bot_first_name: Mapped[str] = mapped_column(String(256))

    bot_token: Mapped[SealedSecret | None] = mapped_column(SealedSecretType, nullable=True)
    webhook_secret: Mapped[SealedSecret | None] = mapped_column(
        SealedSecretType, nullable=True, info=lookup_hash_info("webhook_secret_hash")
    )
    webhook_secret_hash: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # After rotate-secret the previous secret keeps working for a grace period.
    previous_secret_hash: Mapped[str | None] = mapped_column(String(100), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    webhook_key: Mapped[SealedSecret | None] = mapped_column(
        SealedSecretType, nullable=True, info=lookup_hash_info("webhook_key_hash")
    )
    webhook_key_hash: Mapped[str | None] = mapped_column(String(100), nullable=True, unique=True)

    # Long-polling mode: the next getUpdates offset, advanced only after storage.
    polling_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The worker replica allowed to poll this bot, and until when (see app/ingress/polling.py).
    poll_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    poll_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Set when Telegram rejected the token on a send: the connection's outbound queue
    # waits (nothing is failed) until the token is replaced.
    outbound_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return (
            f"TelegramConnection(id={self.id}, workspace_id={self.workspace_id}, "
            f"bot_id={self.bot_id}, status={self.status})"
        )


CONNECTIONS_TABLE = cast(Table, TelegramConnection.__table__)
SEALED_FIELDS: dict[str, SealedField] = {
    field.column: field for field in sealed_fields([CONNECTIONS_TABLE])
}


def credential_context(
    connection_id: uuid.UUID, workspace_id: uuid.UUID, column: str
) -> SecretContext:
    """Where a sealed credential of a connection lives: the associated data of its ciphertext."""
    return SEALED_FIELDS[column].context(connection_id, workspace_id)


def secret_context(connection: TelegramConnection, column: str) -> SecretContext:
    """`credential_context` of a loaded connection row."""
    return credential_context(connection.id, connection.workspace_id, column)
