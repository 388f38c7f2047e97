"""Property tests of the webhook envelope: whatever arrives, the answer is a 200 or
one of the documented errors in the one error shape, and never a 5xx.

Hypothesis draws the whole request: the key (right, wrong, missing, repeated), the
secret header (right, wrong, missing, odd bytes), the content type, and a body that
is arbitrary bytes, arbitrary JSON, an Update with odd values (huge or negative
`update_id`s, NUL characters, lone surrogates, deep nesting), an oversized one, or
one of those in another text encoding. The app runs in process with its real
lifespan on PostgreSQL and Redis. SPEC section 5 says which answer each request
must get, and the test computes it independently of the code: 401 for any
credential failure, then 415, 413, 400, and 200 with the update stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.registration import WEBHOOK_PATH
from app.ingress.models import TelegramUpdate
from app.telegram.conversation_keys import INT64_MAX
from tests.conftest import make_settings, new_workspace, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.telegram_double.double import TelegramDouble

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Small, so that oversized bodies are cheap to draw; the check is the same at 1 MiB.
MAX_BODY = 16 * 1024
ERROR_CODES = {
    400: "invalid_update",
    401: "unauthenticated",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@dataclass
class Webhook:
    client: httpx.AsyncClient
    key: str
    secret: str
    connection_id: uuid.UUID
    session_factory: async_sessionmaker[AsyncSession]


@pytest.fixture
async def webhook(
    tmp_path: Path,
    database_url: str,
    telegram_double: TelegramDouble,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> AsyncIterator[Webhook]:
    settings = make_settings(
        tmp_path,
        database_url,
        telegram_api_base=telegram_double.base_url,
        ingress_max_body_bytes=MAX_BODY,
        # Hundreds of failed authentications in a row are the point of this test;
        # the per-address limit has tests of its own.
        ingress_failed_auth_per_minute=1_000_000,
        ingress_updates_per_second=1_000_000,
        ingress_updates_burst=1_000_000,
    )
    async with running_app(settings) as (_app, client):
        workspace = await new_workspace(db_session_factory)
        bot, created = await connect_bot(client, workspace, telegram_double)
        key, secret = webhook_credentials(telegram_double, bot)
        yield Webhook(client, key, secret, uuid.UUID(created["id"]), db_session_factory)


# -- requests -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    # Any code point, lone surrogates and NUL included: json.dumps escapes them.
    | st.text(alphabet=st.characters(codec=None), max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
update_ids = (
    st.integers(min_value=0, max_value=INT64_MAX)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, INT64_MAX, INT64_MAX + 1, -1, True, 1.0, "1", None])
)


@st.composite
def updates(draw: st.DrawFn) -> dict[str, Any]:
    """An Update-shaped object whose parts may have any value."""
    chat_id = draw(st.integers(min_value=-(2**64), max_value=2**64) | json_values)
    message: dict[str, Any] = {
        "message_id": draw(st.integers(min_value=-5, max_value=2**63) | json_values),
        "date": draw(st.integers(min_value=0, max_value=2**40)),
        "chat": {"id": chat_id, "type": draw(st.sampled_from(["private", "group", "x"]))},
        "text": draw(st.text(alphabet=st.characters(codec=None), max_size=40)),
    }
    if draw(st.booleans()):
        message["from"] = {"id": chat_id, "is_bot": False, "first_name": draw(st.text())}
    if draw(st.booleans()):
        message["business_connection_id"] = draw(json_values)
    if draw(st.booleans()):
        message["message_thread_id"] = draw(json_values)
    kind = draw(
        st.sampled_from(["message", "edited_message", "channel_post", "callback_query", "zz"])
        | st.text(max_size=12)
    )
    update: dict[str, Any] = {kind: message}
    if draw(st.booleans()):
        update["extra"] = draw(json_values)
    if draw(st.integers(min_value=0, max_value=9)):  # mostly present
        update["update_id"] = draw(update_ids)
    return update


def deeply_nested(depth: int) -> bytes:
    return b'{"update_id": 7, "message": ' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    updates().map(lambda value: json.dumps(value).encode()),
    updates().map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "replace")),
    st.tuples(updates(), st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig"])).map(
        lambda pair: json.dumps(pair[0], ensure_ascii=False).encode(pair[1], "replace")
    ),
    st.integers(min_value=10, max_value=5000).map(deeply_nested),
    st.integers(min_value=MAX_BODY - 40, max_value=MAX_BODY + 40).map(
        lambda size: b'{"update_id": 1, "pad": "' + b"x" * size + b'"}'
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "application/jsonx",
    ]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
# None: leave it out. Header values must be latin-1 to be sent at all.
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@dataclass(frozen=True)
class Request:
    key: str
    secret: str
    content_type: str | None
    body: bytes


@st.composite
def requests(draw: st.DrawFn) -> Request:
    key = draw(st.sampled_from(["right", "wrong", "missing", "repeated", "empty"]))
    secret = draw(st.sampled_from(["right", "wrong", "missing"]) | header_text)
    content_type = draw(st.none() | content_types)
    return Request(key, secret, content_type, draw(bodies))


# -- what SPEC section 5 says the answer is -------------------------------------------


def _is_json_media_type(content_type: str | None) -> bool:
    return (
        content_type is not None
        and content_type.split(";", 1)[0].strip().lower() == "application/json"
    )


def _valid_update_id(body: bytes) -> int | None:
    """The update_id if `body` is a UTF-8 JSON object with a storable non-negative one."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    update_id = value.get("update_id")
    if type(update_id) is not int or not 0 <= update_id <= INT64_MAX:
        return None
    return update_id


def expected_status(request: Request) -> int:
    if request.key != "right" or request.secret != "right":
        return 401
    if not _is_json_media_type(request.content_type):
        return 415
    if len(request.body) > MAX_BODY:
        return 413
    if _valid_update_id(request.body) is None:
        return 400
    return 200


async def send(webhook: Webhook, request: Request) -> httpx.Response:
    params: list[tuple[str, str]] = {
        "right": [("key", webhook.key)],
        "wrong": [("key", webhook.key[:-1] + ("A" if webhook.key[-1] != "A" else "B"))],
        "missing": [],
        "repeated": [("key", webhook.key), ("key", webhook.key)],
        "empty": [("key", "")],
    }[request.key]
    headers: dict[str, str | bytes] = {}
    if request.secret == "right":
        headers[SECRET_HEADER] = webhook.secret
    elif request.secret == "wrong":
        headers[SECRET_HEADER] = webhook.secret[::-1]
    elif request.secret != "missing":
        headers[SECRET_HEADER] = request.secret.encode("latin-1")
    if request.content_type is not None:
        headers["Content-Type"] = request.content_type
    return await webhook.client.post(
        WEBHOOK_PATH, params=params, content=request.body, headers=headers
    )


@given(request=requests())
@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
async def test_any_request_gets_a_200_or_the_documented_error(
    request: Request, webhook: Webhook
) -> None:
    response = await send(webhook, request)
    expected = expected_status(request)
    assert response.status_code == expected, (response.status_code, response.text)
    if expected == 200:
        assert response.json() == {}
        update_id = _valid_update_id(request.body)
        async with webhook.session_factory() as session:
            stored = await session.scalar(
                select(TelegramUpdate.id).where(
                    TelegramUpdate.connection_id == webhook.connection_id,
                    TelegramUpdate.update_id == update_id,
                )
            )
        assert stored is not None, "a 200 was answered for an update that was not stored"
    else:
        body = response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == ERROR_CODES[expected]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
