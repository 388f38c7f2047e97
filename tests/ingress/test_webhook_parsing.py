"""What the webhook makes of odd requests: odd JSON, huge integers, other methods."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.registration import WEBHOOK_PATH
from app.inbox.models import ConversationMessage
from tests.conftest import (
    WorkspaceFixture,
)
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update


async def test_an_integer_too_long_to_parse_is_400(
    app_client: Any, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    body = '{"update_id": 1, "message": {"message_id": ' + "9" * 5000 + "}}"
    response = await post_update(app_client, key, secret, body)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "message_patch",
    [
        {"text": "nul \u0000 inside"},
        {"text": "lone surrogate \ud800"},
        {"date": 300_000_000_000},
    ],
)
async def test_odd_but_valid_json_is_stored_not_refused_forever(
    message_patch: dict[str, Any],
    app_client: Any,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    bot, _ = await connect_bot(app_client, workspace, telegram_double)
    key, secret = webhook_credentials(telegram_double, bot)
    sample = load_update("01_message")
    odd = {**sample, "message": {**sample["message"], **message_patch}}
    body = json.dumps(odd)  # escapes \u0000 and the lone surrogate
    assert (await post_update(app_client, key, secret, body)).status_code == 200
    async with db_session_factory() as session:
        (message,) = (await session.execute(select(ConversationMessage))).scalars().all()
    assert message.text is not None and "\x00" not in message.text


async def test_other_methods_on_the_webhook_path_get_the_error_shape(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.get(WEBHOOK_PATH, params={"key": "x"})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
