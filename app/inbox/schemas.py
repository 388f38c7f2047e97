"""The inbox API's response models."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class ContactOut(BaseModel):
    id: uuid.UUID
    connection_id: uuid.UUID
    telegram_chat_id: int
    telegram_username: str | None
    first_name: str | None
    last_name: str | None
    title: str | None
    is_bot: bool | None
    is_chat: bool
    created_at: datetime
    last_seen_at: datetime


class ConversationOut(BaseModel):
    id: uuid.UUID
    connection_id: uuid.UUID
    key: str
    chat_id: int
    chat_type: str
    title: str | None
    business_connection_id: str | None
    thread_id: int | None
    direct_messages_topic_id: int | None
    created_at: datetime
    last_activity_at: datetime


class ConversationMessageOut(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    direction: str
    # None for an outbound message not sent yet.
    telegram_message_id: int | None
    sender_contact_id: uuid.UUID | None
    content_kind: str
    text: str | None
    sent_at: datetime
    edited_at: datetime | None
    received_at: datetime
    # Outbound rows: the message (GET /api/v1/messages/{id}) and its status.
    outbound_message_id: uuid.UUID | None = None
    status: str | None = Field(default=None, validation_alias="delivery_status")
