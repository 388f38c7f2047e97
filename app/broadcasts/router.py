"""The broadcast API (SPEC section 11)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import AnyRole, Reviewer, Sender
from app.auth.service import AuthContext
from app.broadcasts.models import Broadcast
from app.broadcasts.schemas import BroadcastCreate, BroadcastOut
from app.broadcasts.service import BroadcastService, Counts, status_of
from app.db import utcnow
from app.deps import DbSession
from app.errors import Forbidden, NotFound, Unauthenticated, ValidationFailed, responses
from app.messages.errors import (
    ConnectionDeleted,
    IdempotencyKeyReused,
    NotCancellable,
    NotPending,
    SelfApproval,
)
from app.messages.models import MessageStatus
from app.messages.router import IdempotencyKey, message_out
from app.messages.schemas import MessageOut, RejectBody
from app.pagination import Page, PageParams

router = APIRouter(prefix="/api/v1", tags=["broadcasts"])
Params = Annotated[PageParams, Depends()]


def service_for(request: Request, session: AsyncSession, auth: AuthContext) -> BroadcastService:
    settings = request.app.state.settings
    return BroadcastService(
        session,
        auth,
        approval_ttl=settings.approval_ttl,
        messages_per_second=settings.broadcast_messages_per_second,
    )


def broadcast_service(request: Request, session: DbSession, auth: AnyRole) -> BroadcastService:
    return service_for(request, session, auth)


def broadcast_out(broadcast: Broadcast, counts: Counts) -> BroadcastOut:
    return BroadcastOut(
        id=broadcast.id,
        name=broadcast.name,
        connection_id=broadcast.connection_id,
        text=broadcast.text,
        parse_mode=broadcast.parse_mode,
        status=status_of(broadcast, counts, utcnow()),
        recipient_count=broadcast.recipient_count,
        counts={str(status): counts.get(status, 0) for status in MessageStatus},
        requested_by=broadcast.requested_by,
        reviewed_by=broadcast.reviewed_by,
        review_reason=broadcast.review_reason,
        expires_at=broadcast.expires_at,
        decided_at=broadcast.decided_at,
        created_at=broadcast.created_at,
    )


async def answer(service: BroadcastService, broadcast: Broadcast) -> BroadcastOut:
    counts = await service.counts([broadcast])
    return broadcast_out(broadcast, counts[broadcast.id])


@router.post(
    "/broadcasts",
    status_code=202,
    summary="Send one text to many recipients (one approval)",
    responses={
        200: {"description": "An idempotent repeat: the broadcast the key created before."},
        **responses(
            Unauthenticated,
            Forbidden,
            NotFound,
            ConnectionDeleted,
            IdempotencyKeyReused,
            ValidationFailed,
        ),
    },
)
async def create_broadcast(
    body: BroadcastCreate,
    auth: Sender,
    session: DbSession,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BroadcastOut:
    """Sender or admin. One message to each recipient: `contact_ids` (each contact's
    chat with the bot) or `conversation_ids` (sent where each conversation lives)
    of the connection, 1 to 10,000 of them; a repeated id counts once. An id that is
    not one of the connection's contacts or conversations refuses the request
    (422, naming the first). The text is checked as a single message's is. The
    broadcast then waits for one approval (`pending_approval`), or starts sending
    at once (`sending`) when the connection's `approval_mode` is `none`. 202 with
    the broadcast and its messages' counts by status; with an `Idempotency-Key` seen
    before and the same body, 200 with that broadcast; with another body, 409."""
    service = service_for(request, session, auth)
    broadcast, created = await service.create(body, idempotency_key)
    if not created:
        response.status_code = 200
    return await answer(service, broadcast)


@router.get(
    "/broadcasts",
    summary="List broadcasts",
    responses=responses(Unauthenticated, ValidationFailed),
)
async def list_broadcasts(
    service: Annotated[BroadcastService, Depends(broadcast_service)], params: Params
) -> Page[BroadcastOut]:
    """Any role. Newest first, each with its messages' counts by status.
    Cursor-paginated."""
    rows, next_cursor = await service.list_broadcasts(params)
    counts = await service.counts(rows)
    return Page(items=[broadcast_out(b, counts[b.id]) for b in rows], next_cursor=next_cursor)


@router.get(
    "/broadcasts/{broadcast_id}",
    summary="Get a broadcast and its progress",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def get_broadcast(
    broadcast_id: uuid.UUID, service: Annotated[BroadcastService, Depends(broadcast_service)]
) -> BroadcastOut:
    """Any role. The broadcast with its messages' counts by status: `sending` until
    none is queued or being sent, then `finished`."""
    return await answer(service, await service.get(broadcast_id))


@router.get(
    "/broadcasts/{broadcast_id}/messages",
    summary="A broadcast's messages",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def list_broadcast_messages(
    broadcast_id: uuid.UUID,
    service: Annotated[BroadcastService, Depends(broadcast_service)],
    params: Params,
    status: Annotated[MessageStatus | None, Query()] = None,
) -> Page[MessageOut]:
    """Any role. The broadcast's messages in the order of its recipients, each as
    `GET /api/v1/messages/{id}` answers it; `?status=failed` lists the recipients it
    could not reach, with Telegram's reason. Cursor-paginated."""
    rows, next_cursor = await service.messages(broadcast_id, params, status)
    return Page(items=[message_out(m) for m in rows], next_cursor=next_cursor)


@router.post(
    "/broadcasts/{broadcast_id}/approve",
    summary="Approve a pending broadcast",
    responses=responses(
        Unauthenticated, Forbidden, SelfApproval, NotFound, NotPending, ValidationFailed
    ),
)
async def approve_broadcast(
    broadcast_id: uuid.UUID, auth: Reviewer, session: DbSession, request: Request
) -> BroadcastOut:
    """Reviewer or admin, never the token that requested it (403 `self_approval`).
    Every recipient's message is queued at once, falling due at
    `BROADCAST_MESSAGES_PER_SECOND`, so the connection's other messages go between
    them. A broadcast no longer pending is 409 `not_pending`."""
    service = service_for(request, session, auth)
    return await answer(service, await service.approve(broadcast_id))


@router.post(
    "/broadcasts/{broadcast_id}/reject",
    summary="Reject a pending broadcast",
    responses=responses(
        Unauthenticated, Forbidden, SelfApproval, NotFound, NotPending, ValidationFailed
    ),
)
async def reject_broadcast(
    broadcast_id: uuid.UUID,
    body: RejectBody,
    auth: Reviewer,
    session: DbSession,
    request: Request,
) -> BroadcastOut:
    """Reviewer or admin, never the requester. None of its messages is ever sent;
    the reason is kept on the broadcast, its messages and in the audit trail."""
    service = service_for(request, session, auth)
    return await answer(service, await service.reject(broadcast_id, body.reason))


@router.post(
    "/broadcasts/{broadcast_id}/cancel",
    summary="Cancel what a broadcast has not sent yet",
    responses=responses(Unauthenticated, Forbidden, NotFound, NotCancellable, ValidationFailed),
)
async def cancel_broadcast(
    broadcast_id: uuid.UUID, auth: Sender, session: DbSession, request: Request
) -> BroadcastOut:
    """The token that requested it, or an admin, while it is pending approval or
    sending (409 `not_cancellable` otherwise). Its messages pending approval or
    queued are cancelled; one being sent at that moment still goes, and what was
    sent stays sent."""
    service = service_for(request, session, auth)
    return await answer(service, await service.cancel(broadcast_id))
