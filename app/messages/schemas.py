"""The send API's request and response models (SPEC section 7)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from app.messages.formatting import ParseMode
from app.messages.models import MessageStatus
from app.validation import FromString, RequestModel

# "@channelusername": Telegram usernames are 5-32 letters, digits and underscores.
_CHANNEL_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,31}")
# Telegram chat ids fit in 52 bits.
_MAX_CHAT_ID = 2**52


def check_chat_id(value: int | str) -> int | str:
    if isinstance(value, int):
        if value == 0 or abs(value) >= _MAX_CHAT_ID:
            raise PydanticCustomError("chat_id", "must be a Telegram chat id")
        return value
    if not _CHANNEL_USERNAME.fullmatch(value):
        raise PydanticCustomError("chat_id", "must be an integer or @channelusername")
    return value


ChatId = Annotated[StrictInt | str, AfterValidator(check_chat_id)]


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL; Telegram would not show it either.
    if "\x00" in value or re.search("[\ud800-\udfff]", value):
        raise PydanticCustomError("text", "must not contain NUL or unpaired surrogates")
    return value


# Checked against Telegram's rules (formatting.validate_text) by the service.
MessageText = Annotated[str, Field(min_length=1, max_length=40_000), AfterValidator(_no_nul)]


class LinkPreviewOptions(RequestModel):
    """Telegram's LinkPreviewOptions, as sendMessage takes it."""

    is_disabled: StrictBool | None = None
    url: Annotated[str, Field(max_length=2048)] | None = None
    prefer_small_media: StrictBool | None = None
    prefer_large_media: StrictBool | None = None
    show_above_text: StrictBool | None = None


class MessageCreate(RequestModel):
    connection_id: Annotated[uuid.UUID, FromString]
    chat_id: ChatId | None = None
    conversation_id: Annotated[uuid.UUID | None, FromString] = None
    text: MessageText
    parse_mode: Annotated[ParseMode | None, FromString] = None
    reply_to_message_id: Annotated[StrictInt, Field(ge=1)] | None = None
    message_thread_id: Annotated[StrictInt, Field(ge=1)] | None = None
    disable_notification: StrictBool | None = None
    protect_content: StrictBool | None = None
    link_preview_options: LinkPreviewOptions | None = None

    @model_validator(mode="after")
    def _one_address(self) -> MessageCreate:
        if (self.chat_id is None) == (self.conversation_id is None):
            raise PydanticCustomError("address", "give exactly one of chat_id and conversation_id")
        return self


class RejectBody(RequestModel):
    reason: Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_no_nul)]


class MessageOut(BaseModel):
    id: uuid.UUID
    connection_id: uuid.UUID
    conversation_id: uuid.UUID | None
    chat_id: int | str
    text: str
    parse_mode: str | None
    status: MessageStatus
    requested_by: uuid.UUID
    reviewed_by: uuid.UUID | None
    review_reason: str | None
    telegram_message_id: int | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    sent_at: datetime | None
    # The broadcast the message belongs to, if any (app.broadcasts).
    broadcast_id: uuid.UUID | None = None


class AuditEventOut(BaseModel):
    id: uuid.UUID
    actor_token_id: uuid.UUID | None
    action: str
    message_id: uuid.UUID | None
    broadcast_id: uuid.UUID | None
    reason: str | None
    created_at: datetime
