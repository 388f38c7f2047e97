"""Connections API (SPEC section 4): admin for changes, any role to read."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from app.connections.models import (
    TelegramConnection,
)
from app.connections.schemas import (
    BotOut,
    ConnectionCreate,
    ConnectionCreated,
    ConnectionOut,
    ConnectionPatch,
    DeleteOut,
    HealthOut,
    TokenReplace,
)
from app.connections.service import ConnectionService
from app.deps import Admin, AnyRole, DbSession, RuntimeDep
from app.pagination import Page, PageParams, page_of

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])


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


@router.post("/telegram", status_code=201)
async def create_telegram_connection(
    body: ConnectionCreate, auth: Admin, session: DbSession, runtime: RuntimeDep
) -> ConnectionCreated:
    result = await ConnectionService(session, runtime, auth).create(body.bot_token, body.name)
    return ConnectionCreated(
        **connection_out(result.connection).model_dump(), warnings=result.warnings
    )


@router.get("")
async def list_connections(
    auth: AnyRole,
    session: DbSession,
    runtime: RuntimeDep,
    params: Annotated[PageParams, Depends()],
) -> Page[ConnectionOut]:
    rows = await ConnectionService(session, runtime, auth).list_connections(params)
    rows, next_cursor = page_of(rows, params, lambda c: c.created_at)
    return Page(items=[connection_out(c) for c in rows], next_cursor=next_cursor)


@router.get("/{connection_id}")
async def get_connection(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, runtime: RuntimeDep
) -> ConnectionOut:
    return connection_out(await ConnectionService(session, runtime, auth).get(connection_id))


@router.patch("/{connection_id}")
async def update_connection(
    connection_id: uuid.UUID,
    body: ConnectionPatch,
    auth: Admin,
    session: DbSession,
    runtime: RuntimeDep,
) -> ConnectionOut:
    connection = await ConnectionService(session, runtime, auth).update(
        connection_id,
        name=body.name,
        approval_mode=body.approval_mode,
        daily_limit=body.daily_limit,
    )
    return connection_out(connection)


@router.get("/{connection_id}/health")
async def connection_health(
    connection_id: uuid.UUID, auth: AnyRole, session: DbSession, runtime: RuntimeDep
) -> HealthOut:
    report = await ConnectionService(session, runtime, auth).health(connection_id)
    return HealthOut(
        verdict=report.verdict,
        hint=report.hint,
        webhook_url_is_ours=report.webhook_url_is_ours,
        pending_update_count=report.pending_update_count,
        last_error_date=report.last_error_date,
        last_error_message=report.last_error_message,
    )


@router.post("/{connection_id}/rotate-secret")
async def rotate_webhook_secret(
    connection_id: uuid.UUID, auth: Admin, session: DbSession, runtime: RuntimeDep
) -> ConnectionOut:
    service = ConnectionService(session, runtime, auth)
    return connection_out(await service.rotate_secret(connection_id))


@router.put("/{connection_id}/token")
async def replace_bot_token(
    connection_id: uuid.UUID,
    body: TokenReplace,
    auth: Admin,
    session: DbSession,
    runtime: RuntimeDep,
) -> ConnectionOut:
    service = ConnectionService(session, runtime, auth)
    return connection_out(await service.replace_token(connection_id, body.bot_token))


@router.post("/{connection_id}/resync")
async def resync_connection(
    connection_id: uuid.UUID, auth: Admin, session: DbSession, runtime: RuntimeDep
) -> ConnectionOut:
    return connection_out(await ConnectionService(session, runtime, auth).resync(connection_id))


@router.delete("/{connection_id}", response_model_exclude_none=True)
async def delete_connection(
    connection_id: uuid.UUID, auth: Admin, session: DbSession, runtime: RuntimeDep
) -> DeleteOut:
    report = await ConnectionService(session, runtime, auth).delete(connection_id)
    return DeleteOut(id=report.id, remote_cleanup=report.remote_cleanup, hint=report.hint)
