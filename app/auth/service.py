"""Rules for workspaces and API tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import ApiToken, Role, Workspace
from app.auth.repository import TokenRepository, find_token_by_hash, get_workspace, touch_token
from app.auth.tokens import generate_api_token, hash_api_token, looks_like_api_token
from app.db import utcnow
from app.errors import Conflict, NotFound, Unauthenticated
from app.pagination import PageParams

# Writing last_used_at on every request would turn each read into a write; a
# minute's precision is what an operator auditing stale tokens needs.
LAST_USED_PRECISION = timedelta(minutes=1)


class LastAdminToken(Conflict):
    code = "last_admin_token"
    default_message = "This is the workspace's last admin token; create another admin token first."


@dataclass(frozen=True)
class AuthContext:
    """Who is calling: the token, its workspace and its role."""

    token_id: uuid.UUID
    workspace_id: uuid.UUID
    role: Role


async def create_workspace(session: AsyncSession, name: str) -> tuple[Workspace, str]:
    """Create a workspace and its first admin token; returns the token string once."""
    workspace = Workspace(name=name)
    session.add(workspace)
    await session.flush()
    token, secret = _new_token(workspace.id, "initial admin", Role.admin)
    session.add(token)
    await session.flush()
    return workspace, secret


async def issue_token(
    session: AsyncSession, workspace_id: uuid.UUID, name: str, role: Role
) -> tuple[ApiToken, str]:
    """A new token for a workspace, outside any request: the operator's way back in
    when the last admin token is lost. Returns the token string once."""
    if await get_workspace(session, workspace_id) is None:
        raise NotFound("No such workspace.")
    token, secret = _new_token(workspace_id, name, role)
    session.add(token)
    await session.flush()
    return token, secret


def _new_token(workspace_id: uuid.UUID, name: str, role: Role) -> tuple[ApiToken, str]:
    secret = generate_api_token()
    token = ApiToken(
        workspace_id=workspace_id,
        name=name,
        role=role,
        token_hash=hash_api_token(secret),
        created_at=utcnow(),
    )
    return token, secret


async def authenticate(session: AsyncSession, presented: str | None) -> AuthContext:
    """Resolve a bearer token to its context; 401 for missing, unknown or revoked."""
    if not presented or not looks_like_api_token(presented):
        raise Unauthenticated()
    token = await find_token_by_hash(session, hash_api_token(presented))
    if token is None or token.revoked_at is not None:
        raise Unauthenticated()
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_PRECISION:
        await touch_token(session, token.id, now)
    return AuthContext(token_id=token.id, workspace_id=token.workspace_id, role=token.role)


class TokenService:
    def __init__(self, session: AsyncSession, auth: AuthContext) -> None:
        self.repository = TokenRepository(session, auth.workspace_id)
        self.auth = auth

    async def create(self, name: str, role: Role) -> tuple[ApiToken, str]:
        token, secret = _new_token(self.auth.workspace_id, name, role)
        self.repository.add(token)
        await self.repository.session.flush()
        return token, secret

    async def me(self) -> tuple[ApiToken, Workspace]:
        """The calling token and its workspace (both exist: the token was just
        authenticated in this request)."""
        token = await self.repository.get(self.auth.token_id)
        workspace = await get_workspace(self.repository.session, self.auth.workspace_id)
        if token is None or workspace is None:
            raise Unauthenticated()
        return token, workspace

    async def list_tokens(self, params: PageParams) -> list[ApiToken]:
        return await self.repository.list(params)

    async def revoke(self, token_id: uuid.UUID) -> ApiToken:
        """Revoke a token (again: a no-op); the workspace's last live admin token
        cannot be revoked, because nothing could then create another one. Of two
        admins revoking each other at once, one succeeds and the other is refused."""
        await self.repository.lock_workspace()
        revoked = await self.repository.revoke(token_id, utcnow())
        token = await self.repository.get(token_id)
        if token is None:
            raise NotFound("No such API token.")
        if not revoked and token.revoked_at is None:
            raise LastAdminToken()
        return token
