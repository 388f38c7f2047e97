"""The send API and the approval queue (SPEC section 7)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.repository import AuditRepository
from app.auth.deps import Admin, AnyRole, Reviewer, Sender
from app.auth.service import AuthContext
from app.deps import DbSession
from app.errors import Forbidden, NotFound, Unauthenticated, ValidationFailed, responses
from app.messages.errors import (
    ConnectionDeleted,
    IdempotencyKeyReused,
    NotCancellable,
    NotPending,
    SelfApproval,
)
from app.messages.models import MessageStatus, OutboundMessage, telegram_chat_id
from app.messages.schemas import AuditEventOut, MessageCreate, MessageOut, RejectBody
from app.messages.service import MessageService
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1", tags=["messages"])
Params = Annotated[PageParams, Depends()]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Repeat a request safely: the same key and body answer the same message.",
    ),
]


def service_for(request: Request, session: AsyncSession, auth: AuthContext) -> MessageService:
    """The service for this caller; pending messages expire after the app's APPROVAL_TTL."""
    return MessageService(session, auth, request.app.state.settings.approval_ttl)


def message_service(request: Request, session: DbSession, auth: AnyRole) -> MessageService:
    return service_for(request, session, auth)


def message_out(message: OutboundMessage) -> MessageOut:
    return MessageOut(
        id=message.id,
        connection_id=message.connection_id,
        conversation_id=message.conversation_id,
        chat_id=telegram_chat_id(message.chat_id),
        text=message.text,
        parse_mode=message.parse_mode,
        status=message.status,
        requested_by=message.requested_by,
        reviewed_by=message.reviewed_by,
        review_reason=message.review_reason,
        telegram_message_id=message.telegram_message_id,
        attempts=message.attempts,
        last_error=message.last_error,
        next_attempt_at=message.next_attempt_at,
        expires_at=message.expires_at,
        created_at=message.created_at,
        sent_at=message.sent_at,
        broadcast_id=message.broadcast_id,
    )


@router.post(
    "/messages",
    status_code=202,
    summary="Send a message (through the approval queue)",
    responses={
        200: {"description": "An idempotent repeat: the message the key created before."},
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
async def send_message(
    body: MessageCreate,
    auth: Sender,
    session: DbSession,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> MessageOut:
    """Sender or admin. Addressed by `chat_id` (an integer or `@channelusername`) or by
    `conversation_id` (then sent where the conversation lives: its chat, business
    connection, forum thread or direct-messages topic). The text is checked against
    Telegram's rules first (1-4096 characters after entity parsing; `HTML`,
    `MarkdownV2` and `Markdown` checked as Telegram parses them): 422 names the
    problem and its position. Then the message waits for a reviewer
    (`pending_approval`), or is `queued` at once when the connection's
    `approval_mode` is `none`. 202 with the message; with an `Idempotency-Key` seen
    before and the same body, 200 with that message; with another body, 409."""
    service = service_for(request, session, auth)
    message, created = await service.create(body, idempotency_key)
    if not created:
        response.status_code = 200
    return message_out(message)


@router.get(
    "/messages",
    summary="List messages",
    responses=responses(Unauthenticated, ValidationFailed),
)
async def list_messages(
    service: Annotated[MessageService, Depends(message_service)],
    params: Params,
    status: Annotated[MessageStatus | None, Query()] = None,
    connection_id: Annotated[uuid.UUID | None, Query()] = None,
    conversation_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[MessageOut]:
    """Any role. Newest first, except `?status=pending_approval`: oldest first, the
    order reviewers work through the queue. Cursor-paginated."""
    rows, next_cursor = await service.list_messages(
        params, status=status, connection_id=connection_id, conversation_id=conversation_id
    )
    return Page(items=[message_out(m) for m in rows], next_cursor=next_cursor)


@router.get(
    "/messages/{message_id}",
    summary="Get a message",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def get_message(
    message_id: uuid.UUID, service: Annotated[MessageService, Depends(message_service)]
) -> MessageOut:
    """Any role. The message with its status, attempts and Telegram's last error."""
    return message_out(await service.get(message_id))


@router.post(
    "/messages/{message_id}/approve",
    summary="Approve a pending message",
    responses=responses(
        Unauthenticated, Forbidden, SelfApproval, NotFound, NotPending, ValidationFailed
    ),
)
async def approve_message(
    message_id: uuid.UUID, auth: Reviewer, session: DbSession, request: Request
) -> MessageOut:
    """Reviewer or admin, never the token that requested it (403 `self_approval`).
    The message is queued for sending at once. A message no longer pending
    (decided by someone else, expired, cancelled) is 409 `not_pending`, naming its
    status; of two reviewers racing, exactly one wins."""
    service = service_for(request, session, auth)
    return message_out(await service.approve(message_id))


@router.post(
    "/messages/{message_id}/reject",
    summary="Reject a pending message",
    responses=responses(
        Unauthenticated, Forbidden, SelfApproval, NotFound, NotPending, ValidationFailed
    ),
)
async def reject_message(
    message_id: uuid.UUID, body: RejectBody, auth: Reviewer, session: DbSession, request: Request
) -> MessageOut:
    """Reviewer or admin, never the requester. The message is never sent; the reason
    is kept on the message and in the audit trail."""
    service = service_for(request, session, auth)
    return message_out(await service.reject(message_id, body.reason))


@router.post(
    "/messages/{message_id}/cancel",
    summary="Cancel a message not sent yet",
    responses=responses(Unauthenticated, Forbidden, NotFound, NotCancellable, ValidationFailed),
)
async def cancel_message(
    message_id: uuid.UUID, auth: Sender, session: DbSession, request: Request
) -> MessageOut:
    """The token that requested it, or an admin, while it is pending approval or
    queued (409 `not_cancellable` otherwise)."""
    service = service_for(request, session, auth)
    return message_out(await service.cancel(message_id))


@router.get(
    "/audit",
    summary="The audit trail",
    responses=responses(Unauthenticated, Forbidden, ValidationFailed),
)
async def list_audit(
    auth: Admin,
    session: DbSession,
    params: Params,
    message_id: Annotated[uuid.UUID | None, Query()] = None,
    broadcast_id: Annotated[uuid.UUID | None, Query()] = None,
) -> Page[AuditEventOut]:
    """Admin only. Every decision on and lifecycle change of a message (requested,
    approved, rejected, cancelled, expired, sent, failed) and of a broadcast
    (broadcast_requested, broadcast_approved, broadcast_rejected,
    broadcast_cancelled), newest first, with the acting token (none for the service
    itself) and the reason. `?message_id=` narrows it to one message,
    `?broadcast_id=` to one broadcast's own events. Cursor-paginated."""
    rows = await AuditRepository(session, auth.workspace_id).events(
        params, message_id, broadcast_id
    )
    page, next_cursor = page_of(rows, params, lambda r: r.created_at)
    return Page(
        items=[AuditEventOut.model_validate(r, from_attributes=True) for r in page],
        next_cursor=next_cursor,
    )
