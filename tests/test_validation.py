"""What request bodies accept: text the database can store, and strict JSON types.

The text checks run on both backends: PostgreSQL refuses a NUL character in a
text column (a 500 before), while SQLite stores it silently.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.auth.test_tokens_api import assert_error
from tests.conftest import BackendApp, WorkspaceFixture
from tests.connections.helpers import connect_bot
from tests.telegram_double.double import TelegramDouble

# Raw JSON bodies: a lone surrogate cannot be encoded by the client's JSON encoder.
UNSTORABLE_NAMES = {
    "nul": '"secret\\u0000name"',
    "control": '"secret\\u0007name"',
    "newline": '"secret\\nname"',
    "lone surrogate": '"secret\\ud800name"',
}


def json_body(name: str, **fields: Any) -> bytes:
    rest = "".join(f", {json.dumps(key)}: {json.dumps(value)}" for key, value in fields.items())
    return ('{"name": ' + name + rest + "}").encode()


def assert_refused_name(response: httpx.Response) -> None:
    error = assert_error(response, 422, "validation_error")
    assert error["field"] == "name"
    # The input is never echoed back.
    assert "secret" not in response.text


@pytest.mark.parametrize("name", UNSTORABLE_NAMES.values(), ids=UNSTORABLE_NAMES.keys())
async def test_a_token_name_the_database_cannot_store_is_422_naming_the_field(
    backend_app: BackendApp, name: str
) -> None:
    client, workspace = backend_app.client, backend_app.workspace
    response = await client.post(
        "/api/v1/tokens",
        content=json_body(name, role="sender"),
        headers={**workspace.headers(), "Content-Type": "application/json"},
    )
    assert_refused_name(response)
    listed = await client.get("/api/v1/tokens", headers=workspace.headers())
    assert [item["name"] for item in listed.json()["items"]] == ["initial admin"]


async def test_a_connection_name_with_nul_is_422_before_any_telegram_call(
    backend_app: BackendApp, telegram_double: TelegramDouble
) -> None:
    client, workspace = backend_app.client, backend_app.workspace
    bot = telegram_double.add_bot()
    response = await client.post(
        "/api/v1/connections/telegram",
        content=json_body(UNSTORABLE_NAMES["nul"], bot_token=bot.token),
        headers={**workspace.headers(), "Content-Type": "application/json"},
    )
    assert_refused_name(response)
    assert telegram_double.calls == []


@pytest.mark.parametrize("name", UNSTORABLE_NAMES.values(), ids=UNSTORABLE_NAMES.keys())
async def test_renaming_a_connection_to_an_unstorable_name_is_422(
    backend_app: BackendApp, telegram_double: TelegramDouble, name: str
) -> None:
    client, workspace = backend_app.client, backend_app.workspace
    _bot, created = await connect_bot(client, workspace, telegram_double)
    path = f"/api/v1/connections/{created['id']}"
    response = await client.patch(
        path,
        content=json_body(name),
        headers={**workspace.headers(), "Content-Type": "application/json"},
    )
    assert_refused_name(response)
    assert (await client.get(path, headers=workspace.headers())).json()["name"] == created["name"]


async def test_printable_names_in_any_script_are_accepted(
    backend_app: BackendApp,
) -> None:
    client, workspace = backend_app.client, backend_app.workspace
    response = await client.post(
        "/api/v1/tokens",
        json={"name": "Поддержка 客服 — ci ✓", "role": "sender"},
        headers=workspace.headers(),
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Поддержка 客服 — ci ✓"


@pytest.mark.parametrize("value", [True, "25", 7.0], ids=["true", "string", "float"])
async def test_daily_limit_must_be_a_json_integer(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    value: object,
) -> None:
    _bot, created = await connect_bot(app_client, workspace, telegram_double)
    path = f"/api/v1/connections/{created['id']}"
    response = await app_client.patch(
        path, json={"daily_limit": value}, headers=workspace.headers()
    )
    assert assert_error(response, 422, "validation_error")["field"] == "daily_limit"
    current = await app_client.get(path, headers=workspace.headers())
    assert current.json()["daily_limit"] == created["daily_limit"]


async def test_strict_bodies_still_take_enums_as_their_json_strings(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _bot, created = await connect_bot(app_client, workspace, telegram_double)
    response = await app_client.patch(
        f"/api/v1/connections/{created['id']}",
        json={"daily_limit": 25, "approval_mode": "none"},
        headers=workspace.headers(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["daily_limit"] == 25
    assert response.json()["approval_mode"] == "none"
    token = await app_client.post(
        "/api/v1/tokens", json={"name": "ci", "role": "reviewer"}, headers=workspace.headers()
    )
    assert token.status_code == 201 and token.json()["role"] == "reviewer"


async def test_a_token_name_must_be_a_json_string(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    response = await app_client.post(
        "/api/v1/tokens", json={"name": 12, "role": "sender"}, headers=workspace.headers()
    )
    assert assert_error(response, 422, "validation_error")["field"] == "name"
