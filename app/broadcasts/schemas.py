"""The broadcast API's request and response models (SPEC section 11)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, model_validator
from pydantic_core import PydanticCustomError

from app.broadcasts.models import BroadcastStatus
from app.messages.formatting import ParseMode
from app.messages.schemas import LinkPreviewOptions, MessageText
from app.validation import FromString, Name, RequestModel

MAX_RECIPIENTS = 10_000
RecipientIds = Annotated[
    list[Annotated[uuid.UUID, FromString]], Field(min_length=1, max_length=MAX_RECIPIENTS)
]


class BroadcastCreate(RequestModel):
    name: Name
    connection_id: Annotated[uuid.UUID, FromString]
    # Checked against Telegram's rules by the service, as a single message's text is.
    text: MessageText
    parse_mode: Annotated[ParseMode | None, FromString] = None
    disable_notification: StrictBool | None = None
    protect_content: StrictBool | None = None
    link_preview_options: LinkPreviewOptions | None = None
    # The recipients: the connection's contacts (each one's private chat with the
    # bot, or the chat that spoke as itself), or its conversations (sent where each
    # lives, as a single message to it is). Repeated ids count once.
    contact_ids: RecipientIds | None = None
    conversation_ids: RecipientIds | None = None

    @model_validator(mode="after")
    def _one_kind_of_recipient(self) -> BroadcastCreate:
        if (self.contact_ids is None) == (self.conversation_ids is None):
            raise PydanticCustomError(
                "recipients", "give exactly one of contact_ids and conversation_ids"
            )
        return self


class BroadcastOut(BaseModel):
    id: uuid.UUID
    name: str
    connection_id: uuid.UUID
    text: str
    parse_mode: str | None
    status: BroadcastStatus
    # Distinct recipients, one message each.
    recipient_count: int
    # The broadcast's messages by their status (every status, zeros included).
    counts: dict[str, int]
    requested_by: uuid.UUID
    reviewed_by: uuid.UUID | None
    review_reason: str | None
    expires_at: datetime | None
    decided_at: datetime | None
    created_at: datetime
