"""Request dependencies shared by every domain: the per-request database session.

The application's lifespan puts the session factory on `app.state.session_factory`.
Auth dependencies are the auth domain's (`app.auth.deps`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.session_factory
    async for session in session_scope(factory):
        yield session


# scope="function": the commit runs when the handler returns and before the
# response is sent, so a failed commit can never be reported as a success.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
