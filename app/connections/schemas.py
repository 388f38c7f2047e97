from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field

from app.connections.models import ApprovalMode, ConnectionMode, ConnectionStatus
from app.connections.status import Verdict
from app.validation import FromString, Name, RequestModel


class ConnectionCreate(RequestModel):
    model_config = ConfigDict(hide_input_in_errors=True)

    bot_token: str = Field(min_length=1, max_length=256)
    name: Name | None = None


class TokenReplace(RequestModel):
    model_config = ConfigDict(hide_input_in_errors=True)

    bot_token: str = Field(min_length=1, max_length=256)


class ConnectionPatch(RequestModel):
    name: Name | None = None
    approval_mode: Annotated[ApprovalMode | None, FromString] = None
    daily_limit: int | None = Field(default=None, ge=1, le=1_000_000)


class BotOut(BaseModel):
    id: int
    username: str | None
    first_name: str


class ConnectionOut(BaseModel):
    id: uuid.UUID
    name: str
    provider: Literal["telegram"] = "telegram"
    status: ConnectionStatus
    status_hint: str | None
    mode: ConnectionMode
    bot: BotOut
    approval_mode: ApprovalMode
    daily_limit: int
    created_at: datetime
    updated_at: datetime


class ConnectionCreated(ConnectionOut):
    warnings: list[str] = Field(default_factory=list)


class HealthOut(BaseModel):
    """The live health check's answer (built by the service, returned as it is)."""

    verdict: Verdict
    hint: str | None
    webhook_url_is_ours: bool
    pending_update_count: int | None = None
    last_error_date: datetime | None = None
    last_error_message: str | None = None


class DeleteOut(BaseModel):
    """What a delete did (built by the service, returned as it is)."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    deleted: Literal[True] = True
    remote_cleanup: Literal["ok", "failed"]
    hint: str | None = None


# Request examples for the API document (/docs offers them in "Try it out"). The
# token has a real token's shape; Telegram does not know it.
_EXAMPLE_BOT = "7000000001:AAFq3ZxExampleExampleExampleExample01"

CONNECTION_CREATE_EXAMPLES: dict[str, Example] = {
    "token only": {
        "summary": "Name taken from the bot",
        "value": {"bot_token": _EXAMPLE_BOT},
    },
    "named": {
        "summary": "With a name of your own",
        "value": {"bot_token": _EXAMPLE_BOT, "name": "Support bot"},
    },
}
CONNECTION_PATCH_EXAMPLES: dict[str, Example] = {
    "rename": {"summary": "Rename", "value": {"name": "Support (EU)"}},
    "no approval": {
        "summary": "Send without approval, at most 500 a day",
        "value": {"approval_mode": "none", "daily_limit": 500},
    },
}
TOKEN_REPLACE_EXAMPLES: dict[str, Example] = {
    "regenerated": {
        "summary": "The bot's new token from @BotFather",
        "value": {"bot_token": "7000000001:AAGn5ZxRegeneratedRegeneratedRegener02"},
    },
}
