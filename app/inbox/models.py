"""The inbox: who wrote to each bot, the conversations, and their messages.

- `contacts`: who wrote to the bot, per connection (a user, or a chat that spoke
  as itself: a channel, an anonymous group admin).
- `conversations`: one per canonical conversation key (chat, business connection,
  forum topic, direct-messages topic), per connection.
- `conversation_messages`: the inbox, inbound and outbound, in order.

Rows are derived from received updates (`app.inbox.recording`), inside the
transaction that stores them, so they exist as soon as the update is acknowledged.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, new_id, utcnow


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("connection_id", "telegram_chat_id"),
        Index("ix_contacts_workspace_created", "workspace_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("telegram_connections.id", ondelete="CASCADE")
    )
    # A user's id is also the id of their private chat with the bot.
    telegram_chat_id: Mapped[int] = mapped_column(BigInteger)
    telegram_username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    first_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    title: Mapped[str | None] = mapped_column(String(256), nullable=True)
    is_bot: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    is_chat: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("connection_id", "key"),
        Index("ix_conversations_workspace_activity", "workspace_id", "last_activity_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("telegram_connections.id", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(String(300))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    chat_type: Mapped[str] = mapped_column(String(32))
    title: Mapped[str | None] = mapped_column(String(256), nullable=True)
    business_connection_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    thread_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    direct_messages_topic_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationMessage(Base):
    """One message in a conversation's inbox; edits update the row in place."""

    __tablename__ = "conversation_messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "direction", "telegram_message_id"),
        Index("ix_conversation_messages_order", "conversation_id", "sent_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("telegram_connections.id", ondelete="CASCADE")
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    direction: Mapped[str] = mapped_column(String(8))
    telegram_message_id: Mapped[int] = mapped_column(BigInteger)
    sender_contact_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True
    )
    content_kind: Mapped[str] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Telegram's date of the message (the inbox order); received_at is ours.
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Outbound rows: the outbound message they show (app.messages), and its status
    # as the messages domain last reported it; None for inbound rows.
    outbound_message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, unique=True)
    delivery_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
