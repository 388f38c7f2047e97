"""Connections API (SPEC section 4): admin for changes, any role to read."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request

from app.auth.deps import Admin, AnyRole
from app.connections.errors import (
    BotAlreadyConnected,
    BotAlreadyConnectedHere,
    DifferentBot,
    InvalidBotToken,
    NotABot,
    RotationUnsettled,
    TelegramRejected,
    TelegramUnavailable,
)
from app.connections.models import (
    TelegramConnection,
)
from app.connections.schemas import (
    CONNECTION_CREATE_EXAMPLES,
    CONNECTION_PATCH_EXAMPLES,
    TOKEN_REPLACE_EXAMPLES,
    BotOut,
    ConnectionCreate,
    ConnectionCreated,
    ConnectionOut,
    ConnectionPatch,
    DeleteOut,
    HealthOut,
    TokenReplace,
)
from app.connections.service import ConnectionCollaborators, ConnectionService
from app.deps import DbSession
from app.errors import (
    Forbidden,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
    ValidationFailed,
    responses,
)
from app.locks import OperationInProgress
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])


def connection_collaborators(request: Request) -> ConnectionCollaborators:
    """What the process assembled for this domain (see `app.runtime`)."""
    collaborators: ConnectionCollaborators = request.app.state.connections
    return collaborators


Collaborators = Annotated[ConnectionCollaborators, Depends(connection_collaborators)]

# What every change that talks to Telegram under the connection's lock can answer.
_CHANGE_ERRORS = (
    Unauthenticated,
    Forbidden,
    NotFound,
    OperationInProgress,
    ValidationFailed,
    InvalidBotToken,
    TelegramUnavailable,
    TelegramRejected,
    ServiceUnavailable,
)


def connection_out(connection: TelegramConnection) -> ConnectionOut:
    return ConnectionOut(
        id=connection.id,
        name=connection.name,
        status=connection.status,
        status_hint=connection.status_hint,
        mode=connection.mode,
        bot=BotOut(
            id=connection.bot_id,
            username=connection.bot_username,
            first_name=connection.bot_first_name,
        ),
        approval_mode=connection.approval_mode,
        daily_limit=connection.daily_limit,
        created_at=connection.created_at,
        updated_at=connection.updated_at,
    )


@router.post(
    "/telegram",
    status_code=201,
    summary="Connect a Telegram bot",
    responses=responses(
        Unauthenticated,
        Forbidden,
        BotAlreadyConnected,
        BotAlreadyConnectedHere,
        ValidationFailed,
        InvalidBotToken,
        NotABot,
        TelegramUnavailable,
        TelegramRejected,
    ),
)
async def create_telegram_connection(
    body: Annotated[ConnectionCreate, Body(openapi_examples=CONNECTION_CREATE_EXAMPLES)],
    auth: Admin,
    session: DbSession,
    collaborators: Collaborators,
) -> ConnectionCreated:
    """Admin only. In order:

    1. The token's shape is checked with no network call (422 `validation_error`).
    2. Telegram's `getMe` says which bot it is: a rejected token is 422
       `invalid_bot_token`, a user account 422 `not_a_bot`; Telegram unreachable,
       failing or rate limiting is 502 `telegram_unavailable`.
    3. The bot is claimed for this workspace. A bot connected to another workspace
       is 409 `bot_already_connected` (which one is never said); one connected
       here is 409 `bot_already_connected_here` with its `connection_id`. The
       claim is committed before Telegram is touched, so of concurrent requests
       for one bot exactly one goes on.
    4. A webhook secret and key are generated and stored encrypted with the token,
       and the bot's webhook is pointed here (`setWebhook`); without
       `PUBLIC_BASE_URL` the connection uses long polling (`deleteWebhook`). If
       that fails, the claim is released and the bot can be connected again: 502
       (`telegram_error` carries Telegram's description).

    `warnings` says when a webhook that pointed elsewhere was replaced (naming the
    host only). No token, secret or key is ever in a response."""
    result = await ConnectionService(session, auth, collaborators).create(body.bot_token, body.name)
    return ConnectionCreated(
        **connection_out(result.connection).model_dump(), warnings=result.warnings
    )


@router.get(
    "",
    summary="List connections",
    responses=responses(Unauthenticated, ValidationFailed),
)
async def list_connections(
    auth: AnyRole,
    session: DbSession,
    collaborators: Collaborators,
    params: Annotated[PageParams, Depends()],
) -> Page[ConnectionOut]:
    """Any role. The workspace's connections, newest first; deleted ones are not
    listed. Cursor-paginated (`?cursor=`, `?limit=` 1-200, default 50)."""
    rows = await ConnectionService(session, auth, collaborators).list_connections(params)
    rows, next_cursor = page_of(rows, params, lambda c: c.created_at)
    return Page(items=[connection_out(c) for c in rows], next_cursor=next_cursor)


@router.get(
    "/{connection_id}",
    summary="Get a connection",
    responses=responses(Unauthenticated, NotFound, ValidationFailed),
)
async def get_connection(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, collaborators: Collaborators
) -> ConnectionOut:
    """Any role. One connection; a deleted one, or one of another workspace, is 404."""
    return connection_out(await ConnectionService(session, auth, collaborators).get(connection_id))


@router.patch(
    "/{connection_id}",
    summary="Change a connection's settings",
    responses=responses(Unauthenticated, Forbidden, NotFound, ValidationFailed),
)
async def update_connection(
    connection_id: uuid.UUID,
    body: Annotated[ConnectionPatch, Body(openapi_examples=CONNECTION_PATCH_EXAMPLES)],
    auth: Admin,
    session: DbSession,
    collaborators: Collaborators,
) -> ConnectionOut:
    """Admin only. Changes the fields given and keeps the others: `name`,
    `approval_mode` (`required`, the default, or `none`) and `daily_limit`
    (1-1000000). Telegram is not called."""
    connection = await ConnectionService(session, auth, collaborators).update(
        connection_id,
        name=body.name,
        approval_mode=body.approval_mode,
        daily_limit=body.daily_limit,
    )
    return connection_out(connection)


@router.get(
    "/{connection_id}/health",
    summary="Check a connection with Telegram",
    responses=responses(
        Unauthenticated,
        NotFound,
        ValidationFailed,
        RateLimited,
        TelegramUnavailable,
        TelegramRejected,
        ServiceUnavailable,
    ),
)
async def connection_health(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, collaborators: Collaborators
) -> HealthOut:
    """Any role (the settings page shows it to everyone). A live `getWebhookInfo`,
    judged: `healthy`; `degraded` when Telegram reports a delivery error within
    the last hour; `action_required` when the webhook points elsewhere or is
    missing, a webhook blocks long polling, Telegram rejects the token, or a
    secret rotation was never confirmed. `hint` says what to do. The
    connection's `status` and `status_hint` follow the verdict.

    Each check is a Telegram call, so checks are limited per connection (30 a
    minute, bursts of 10): 429 with `Retry-After`. 503 when the limiter's Redis
    is unreachable."""
    return await ConnectionService(session, auth, collaborators).health(connection_id)


@router.post(
    "/{connection_id}/rotate-secret",
    summary="Rotate the webhook secret",
    responses=responses(*_CHANGE_ERRORS, RotationUnsettled),
)
async def rotate_webhook_secret(
    connection_id: uuid.UUID, auth: Admin, session: DbSession, collaborators: Collaborators
) -> ConnectionOut:
    """Admin only. A new webhook secret is stored, and known to every replica,
    before `setWebhook` gives it to Telegram; the previous secret is still
    accepted for `WEBHOOK_SECRET_GRACE_SECONDS` (default 600).

    If Telegram cannot be told (502), nothing is rolled back: Telegram may have
    applied the new secret without our seeing the answer, so both secrets are
    accepted for 24 hours and the connection is `action_required` until a
    resync settles it. Rotating again before then is 409 `rotation_unsettled`.
    One change to a connection runs at a time: 409 `operation_in_progress`; 503
    when Redis, which holds that lock, is unreachable."""
    service = ConnectionService(session, auth, collaborators)
    return connection_out(await service.rotate_secret(connection_id))


@router.put(
    "/{connection_id}/token",
    summary="Replace the bot token",
    responses=responses(*_CHANGE_ERRORS, DifferentBot),
)
async def replace_bot_token(
    connection_id: uuid.UUID,
    body: Annotated[TokenReplace, Body(openapi_examples=TOKEN_REPLACE_EXAMPLES)],
    auth: Admin,
    session: DbSession,
    collaborators: Collaborators,
) -> ConnectionOut:
    """Admin only. For a token regenerated in @BotFather: `getMe` must name the
    same bot (else 422 `different_bot`; a token Telegram rejects is 422
    `invalid_bot_token`). The new token is encrypted and stored, then the webhook
    is registered again with it. If registering fails (502) the new token is
    kept and the connection is `action_required` with a hint; resync to retry.
    One change to a connection runs at a time: 409 `operation_in_progress`."""
    service = ConnectionService(session, auth, collaborators)
    return connection_out(await service.replace_token(connection_id, body.bot_token))


@router.post(
    "/{connection_id}/resync",
    summary="Register the webhook again",
    responses=responses(*_CHANGE_ERRORS),
)
async def resync_connection(
    connection_id: uuid.UUID, auth: Admin, session: DbSession, collaborators: Collaborators
) -> ConnectionOut:
    """Admin only. Points the bot's webhook here again with the current secret
    (in polling mode: removes any webhook). The mode follows whether
    `PUBLIC_BASE_URL` is set now. The fix when health says another app took the
    webhook, and the way to settle an unconfirmed rotation. Success makes the
    connection `active`; a Telegram failure (502) leaves it `action_required`
    with a hint. One change to a connection runs at a time: 409
    `operation_in_progress`."""
    return connection_out(
        await ConnectionService(session, auth, collaborators).resync(connection_id)
    )


@router.delete(
    "/{connection_id}",
    response_model_exclude_none=True,
    summary="Delete a connection",
    responses=responses(
        Unauthenticated,
        Forbidden,
        NotFound,
        OperationInProgress,
        ValidationFailed,
        TelegramUnavailable,
        ServiceUnavailable,
    ),
)
async def delete_connection(
    connection_id: uuid.UUID, auth: Admin, session: DbSession, collaborators: Collaborators
) -> DeleteOut:
    """Admin only. `deleteWebhook`, then the stored credentials are destroyed; the
    row is kept for history, and the contacts, conversations and messages stay
    in the inbox. Afterwards the connection answers 404 and its webhook key 401.

    If Telegram refuses (the token was revoked) the connection is still removed,
    with `remote_cleanup: "failed"` and a `hint` to remove the webhook by hand.
    If Telegram is unreachable or failing (network error, 5xx, 429), nothing is
    removed: 502 `telegram_unavailable`, and the connection keeps its
    credentials so that a retry can clean up. One change to a connection runs at
    a time: 409 `operation_in_progress`."""
    return await ConnectionService(session, auth, collaborators).delete(connection_id)
