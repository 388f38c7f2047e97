"""Received updates of a connection (any role); the webhook itself is `app.ingress.webhook`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from app.auth.deps import AnyRole
from app.deps import DbSession
from app.errors import NotFound, Unauthenticated, ValidationFailed, responses
from app.ingress.repository import UpdateRepository
from app.ingress.schemas import EventOut
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1", tags=["inbox"])
Params = Annotated[PageParams, Depends()]


@router.get(
    "/connections/{connection_id}/events",
    summary="List a connection's received updates",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def list_events(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, params: Params
) -> Page[EventOut]:
    """Any role. The updates the connection received, newest first: `update_id`,
    type, source (`webhook` or `polling`) and when it arrived; each once, however
    often Telegram delivered it. A deleted connection, or one of another
    workspace, is 404. Cursor-paginated (`?cursor=`, `?limit=` 1-200, default 50)."""
    updates = UpdateRepository(session, auth.workspace_id)
    if not await updates.connection_exists(connection_id):
        raise NotFound("No such connection.")
    rows, next_cursor = page_of(
        await updates.events(connection_id, params), params, lambda r: r.received_at
    )
    return Page(
        items=[
            EventOut(
                id=r.id,
                connection_id=r.connection_id,
                update_id=r.update_id,
                type=r.kind,
                source=r.source,
                received_at=r.received_at,
            )
            for r in rows
        ],
        next_cursor=next_cursor,
    )
