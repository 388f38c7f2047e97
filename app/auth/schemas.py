from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi.openapi.models import Example
from pydantic import BaseModel

from app.auth.models import Role
from app.validation import FromString, Name, RequestModel


class TokenCreate(RequestModel):
    name: Name
    role: Annotated[Role, FromString]


class TokenOut(BaseModel):
    id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(BaseModel):
    """The only response that ever carries a token string."""

    id: uuid.UUID
    name: str
    role: Role
    token: str
    created_at: datetime


class WorkspaceRef(BaseModel):
    id: uuid.UUID
    name: str


class MeOut(BaseModel):
    """The calling token: what a client (the settings UI) needs to know who it is."""

    token_id: uuid.UUID
    name: str
    role: Role
    workspace: WorkspaceRef


class WorkspaceOut(BaseModel):
    """A workspace as `integrations workspace list --json` prints it."""

    id: uuid.UUID
    name: str
    created_at: datetime


# Request examples for the API document (/docs offers them in "Try it out").
TOKEN_CREATE_EXAMPLES: dict[str, Example] = {
    "sender": {
        "summary": "A token for a service that sends messages",
        "value": {"name": "crm-outbound", "role": "sender"},
    },
    "reviewer": {
        "summary": "A token for a person who approves messages",
        "value": {"name": "support-lead", "role": "reviewer"},
    },
}
