"""The API document (/openapi.json) held against the application.

Every route is in it, every operation is described and secured, every error
response uses the service's error model, and every status the document lists
for an operation is provoked here, against the real app on PostgreSQL and Redis
with the Bot API double, answering that status with one of the listed codes.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import BaseRoute, Route

from app.auth.models import Role
from app.config import Settings
from app.connections.registration import WEBHOOK_PATH
from app.errors import Error
from app.health import NotReady
from app.main import create_app
from tests.conftest import WorkspaceFixture, make_settings, running_app
from tests.connections.helpers import connect_bot, webhook_credentials
from tests.faults.services import RedisProcess
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update
from tests.telegram_double.state import FakeBot

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ERROR_REF = "#/components/schemas/Error"
DETAIL_REF = "#/components/schemas/ErrorDetail"
UNAUTHENTICATED_PATHS = {"/health", "/ready", WEBHOOK_PATH}
# Operations that take no input at all (no path, query or body): nothing to be 422 about.
NO_INPUT_PATHS = {"/api/v1/me"}

# The document the cases are collected from; a test checks it is the one served.
DOC: dict[str, Any] = create_app(
    make_settings(Path("unused"), "postgresql+asyncpg://unused/unused"), configure_logs=False
).openapi()
OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    (method.upper(), path, operation)
    for path, item in DOC["paths"].items()
    for method, operation in item.items()
]
DOCUMENTED: list[tuple[str, str, int]] = [
    (method, path, int(status))
    for method, path, operation in OPERATIONS
    for status in operation["responses"]
]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def documented_codes(method: str, path: str, status: int) -> set[str]:
    response = DOC["paths"][path][method.lower()]["responses"][str(status)]
    examples = response["content"]["application/json"]["examples"]
    return {example["value"]["error"]["code"] for example in examples.values()}


def request_examples(method: str, path: str) -> list[dict[str, Any]]:
    body = DOC["paths"][path][method.lower()].get("requestBody")
    if body is None:
        return []
    return [e["value"] for e in body["content"]["application/json"].get("examples", {}).values()]


def fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


# -- the document itself --------------------------------------------------------------


def served_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every HTTP route, included routers' routes too."""
    for route in routes:
        if isinstance(route, Route | APIRoute):
            for method in route.methods or ():
                if method != "HEAD":
                    yield method, prefix + route.path
        elif hasattr(route, "original_router"):
            # Recent FastAPI keeps an included router as one route that holds it.
            context = getattr(route, "include_context", None)
            yield from served_routes(
                route.original_router.routes, prefix + getattr(context, "prefix", "")
            )


async def test_served_document_has_every_route_with_its_methods(
    settings: Settings, db_session_factory: object, redis_client: object
) -> None:
    async with running_app(settings) as (app, client):
        served = (await client.get("/openapi.json")).json()
    assert served == json.loads(json.dumps(DOC))
    routes = set(served_routes(app.routes))
    # The document's own routes, /docs, which is built from it, and the Prometheus
    # text for scrapers (README "Operations: metrics"), which is not part of the API.
    routes -= {
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/metrics"),
    }
    routes -= {("GET", "/ui")}
    assert ("POST", WEBHOOK_PATH) in routes
    assert {(method, path) for method, path, _ in OPERATIONS} == routes


def test_every_operation_has_a_summary_a_description_and_its_security() -> None:
    for method, path, operation in OPERATIONS:
        where = f"{method} {path}"
        assert operation.get("summary"), where
        assert len(operation.get("description", "")) > 40, where
        if path in UNAUTHENTICATED_PATHS:
            assert "security" not in operation, where
        else:
            assert operation["security"] == [{"bearer": []}], where
            expected = {"401"} if path in NO_INPUT_PATHS else {"401", "422"}
            assert expected <= set(operation["responses"]), where


def test_every_error_response_uses_the_service_error_model() -> None:
    assert "HTTPValidationError" not in json.dumps(DOC)
    assert "ValidationError" not in DOC["components"]["schemas"]
    assert resolve({"$ref": ERROR_REF})["properties"]["error"] == {"$ref": DETAIL_REF}
    for method, path, status in DOCUMENTED:
        if status < 400:
            continue
        where = f"{method} {path} {status}"
        content = DOC["paths"][path][method.lower()]["responses"][str(status)]["content"]
        media = content["application/json"]
        schema = resolve(media["schema"])
        assert schema["properties"]["error"] == {"$ref": DETAIL_REF}, where
        assert "error" in schema["required"], where
        model = NotReady if path == "/ready" else Error
        for name, example in media["examples"].items():
            body = model.model_validate(example["value"])
            assert body.error.code == name, where


async def test_development_docs_offer_the_bearer_scheme_and_production_has_none(
    settings: Settings, db_session_factory: object, redis_client: object
) -> None:
    assert DOC["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "wsk_...",
            "description": DOC["components"]["securitySchemes"]["bearer"]["description"],
        }
    }
    async with running_app(settings) as (_app, client):
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text
    production = settings.model_copy(update={"app_env": "production"})
    async with running_app(production) as (_app, client):
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404


async def test_request_examples_pass_request_validation(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture, telegram_double: TelegramDouble
) -> None:
    _, connection = await connect_bot(app_client, workspace, telegram_double)
    with_examples = [
        (m, p) for m, p, _ in OPERATIONS if p != WEBHOOK_PATH and request_examples(m, p)
    ]
    assert len(with_examples) == 4
    for method, path in with_examples:
        for example in request_examples(method, path):
            response = await app_client.request(
                method, fill(path, connection["id"]), json=example, headers=workspace.headers()
            )
            # The example tokens have a real token's shape that Telegram does not
            # know: past validation, Telegram's getMe refuses them.
            if response.status_code == 422:
                assert response.json()["error"]["code"] == "invalid_bot_token", response.text
            else:
                assert response.status_code in (200, 201), response.text


# -- every documented status, provoked ------------------------------------------------


@dataclass
class Situation:
    """What a case needs: the app on the shared services, a workspace, the double,
    and a way to start another app with other settings for the rest of the case."""

    client: httpx.AsyncClient
    workspace: WorkspaceFixture
    double: TelegramDouble
    settings: Settings
    tmp_path: Path
    stack: AsyncExitStack

    async def app(self, **overrides: Any) -> httpx.AsyncClient:
        settings = self.settings.model_copy(update=overrides)
        _app, client = await self.stack.enter_async_context(running_app(settings))
        return client

    async def connection(self, client: httpx.AsyncClient | None = None) -> tuple[FakeBot, str]:
        bot, body = await connect_bot(client or self.client, self.workspace, self.double)
        return bot, str(body["id"])

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        client: httpx.AsyncClient | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        return await (client or self.client).request(
            method, path, json=json, params=params, headers=self.workspace.headers(token)
        )


Provoke = Callable[[Situation, str, str], Awaitable[httpx.Response]]
# The status the running case is to provoke, for cases that provoke several.
DOCUMENT_STATUS: contextvars.ContextVar[int] = contextvars.ContextVar("status")
CASES: dict[tuple[str, str, int], Provoke] = {}
GENERIC: dict[int, Provoke] = {}


def provokes(*targets: tuple[str, str, int]) -> Callable[[Provoke], Provoke]:
    def register(provoke: Provoke) -> Provoke:
        for target in targets:
            assert target not in CASES, target
            CASES[target] = provoke
        return provoke

    return register


def generic(status: int) -> Callable[[Provoke], Provoke]:
    def register(provoke: Provoke) -> Provoke:
        GENERIC[status] = provoke
        return provoke

    return register


def first_example(method: str, path: str) -> dict[str, Any] | None:
    examples = request_examples(method, path)
    return examples[0] if examples else None


@generic(401)
async def without_a_token(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.client.request(
        method, fill(path, str(uuid.uuid4())), json=first_example(method, path)
    )


@generic(403)
async def with_a_reviewer_token(ctx: Situation, method: str, path: str) -> httpx.Response:
    _, reviewer = await ctx.workspace.token(Role.reviewer)
    return await ctx.call(
        method, fill(path, str(uuid.uuid4())), token=reviewer, json=first_example(method, path)
    )


@generic(404)
async def with_an_unknown_id(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, fill(path, str(uuid.uuid4())), json=first_example(method, path))


@generic(422)
async def with_a_malformed_request(ctx: Situation, method: str, path: str) -> httpx.Response:
    if "{" in path:
        return await ctx.call(method, fill(path, "not-a-uuid"), json=first_example(method, path))
    if "requestBody" in DOC["paths"][path][method.lower()]:
        return await ctx.call(method, path, json={"unexpected": True})
    return await ctx.call(method, path, params={"limit": 0})


CONNECTIONS = "/api/v1/connections"
ONE = f"{CONNECTIONS}/{{connection_id}}"
CREATE = f"{CONNECTIONS}/telegram"
HEALTH = f"{ONE}/health"
ROTATE = f"{ONE}/rotate-secret"
TOKEN = f"{ONE}/token"
RESYNC = f"{ONE}/resync"
EVENTS = f"{ONE}/events"
TOKENS = "/api/v1/tokens"
MESSAGES = "/api/v1/conversations/{conversation_id}/messages"


async def post_update(
    client: httpx.AsyncClient,
    key: str,
    secret: str,
    body: bytes | dict[str, Any],
    content_type: str = "application/json",
) -> httpx.Response:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return await client.post(
        WEBHOOK_PATH,
        params={"key": key},
        content=raw,
        headers={"Content-Type": content_type, SECRET_HEADER: secret},
    )


async def credentials(ctx: Situation, client: httpx.AsyncClient | None = None) -> tuple[str, str]:
    bot, _ = await ctx.connection(client)
    return webhook_credentials(ctx.double, bot)


# Operations


@provokes(("GET", "/health", 200))
async def liveness(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.client.get(path)


@provokes(("GET", "/ready", 200))
async def ready(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.client.get(path)


@provokes(("GET", "/ready", 503))
async def redis_unreachable(ctx: Situation, method: str, path: str) -> httpx.Response:
    client = await ctx.app(redis_url="redis://127.0.0.1:1/0")
    return await client.get(path)


# Tokens


@provokes(("POST", TOKENS, 201))
async def token_created(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, path, json=first_example(method, path))


@provokes(("GET", "/api/v1/me", 200))
async def me_answered(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, path)


@provokes(("GET", TOKENS, 200))
async def tokens_listed(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, path)


@provokes(("DELETE", f"{TOKENS}/{{token_id}}", 200))
async def token_revoked(ctx: Situation, method: str, path: str) -> httpx.Response:
    token_id, _ = await ctx.workspace.token(Role.sender)
    return await ctx.call(method, fill(path, str(token_id)))


@provokes(("DELETE", f"{TOKENS}/{{token_id}}", 409))
async def last_admin_token_revoked(ctx: Situation, method: str, path: str) -> httpx.Response:
    listed = (await ctx.call("GET", TOKENS)).json()["items"]
    (admin,) = [t for t in listed if t["role"] == "admin"]
    return await ctx.call(method, fill(path, admin["id"]))


# Connections: success


@provokes(("POST", CREATE, 201))
async def bot_connected(ctx: Situation, method: str, path: str) -> httpx.Response:
    bot = ctx.double.add_bot()
    return await ctx.call(method, path, json={"bot_token": bot.token, "name": "Support"})


@provokes(
    ("GET", CONNECTIONS, 200),
    ("GET", ONE, 200),
    ("GET", HEALTH, 200),
    ("POST", ROTATE, 200),
    ("POST", RESYNC, 200),
    ("DELETE", ONE, 200),
    ("GET", EVENTS, 200),
)
async def on_a_connection(ctx: Situation, method: str, path: str) -> httpx.Response:
    ctx.double.enforce_set_webhook_rate_limit = False
    _, connection_id = await ctx.connection()
    return await ctx.call(method, fill(path, connection_id))


@provokes(("PATCH", ONE, 200))
async def connection_changed(ctx: Situation, method: str, path: str) -> httpx.Response:
    _, connection_id = await ctx.connection()
    return await ctx.call(method, fill(path, connection_id), json=first_example(method, path))


@provokes(("PUT", TOKEN, 200))
async def token_replaced(ctx: Situation, method: str, path: str) -> httpx.Response:
    ctx.double.enforce_set_webhook_rate_limit = False
    bot, connection_id = await ctx.connection()
    new_token = ctx.double.rotate_token(bot)
    return await ctx.call(method, fill(path, connection_id), json={"bot_token": new_token})


# Connections: refusals


@provokes(("POST", CREATE, 409))
async def bot_connected_twice(ctx: Situation, method: str, path: str) -> httpx.Response:
    bot, _ = await ctx.connection()
    return await ctx.call(method, path, json={"bot_token": bot.token})


@provokes(("POST", CREATE, 502), ("PUT", TOKEN, 502))
async def get_me_fails(ctx: Situation, method: str, path: str) -> httpx.Response:
    bot, connection_id = await ctx.connection()
    ctx.double.fail_next("getMe", status=502)
    if method == "POST":
        return await ctx.call(method, path, json={"bot_token": ctx.double.add_bot().token})
    return await ctx.call(
        method, fill(path, connection_id), json={"bot_token": ctx.double.rotate_token(bot)}
    )


@provokes(("GET", HEALTH, 502))
async def get_webhook_info_fails(ctx: Situation, method: str, path: str) -> httpx.Response:
    _, connection_id = await ctx.connection()
    ctx.double.fail_next("getWebhookInfo", status=500)
    return await ctx.call(method, fill(path, connection_id))


@provokes(("POST", ROTATE, 502), ("POST", RESYNC, 502))
async def set_webhook_fails(ctx: Situation, method: str, path: str) -> httpx.Response:
    ctx.double.enforce_set_webhook_rate_limit = False
    _, connection_id = await ctx.connection()
    ctx.double.fail_next("setWebhook", status=500)
    return await ctx.call(method, fill(path, connection_id))


@provokes(("DELETE", ONE, 502))
async def delete_webhook_fails(ctx: Situation, method: str, path: str) -> httpx.Response:
    _, connection_id = await ctx.connection()
    ctx.double.fail_next("deleteWebhook", status=502)
    return await ctx.call(method, fill(path, connection_id))


@provokes(("GET", HEALTH, 429))
async def checked_too_often(ctx: Situation, method: str, path: str) -> httpx.Response:
    _, connection_id = await ctx.connection()
    for _ in range(20):
        response = await ctx.call(method, fill(path, connection_id))
        if response.status_code != 200:
            return response
    raise AssertionError("health checks were never limited")


@provokes(("POST", ROTATE, 409), ("PUT", TOKEN, 409), ("POST", RESYNC, 409), ("DELETE", ONE, 409))
async def while_another_change_runs(ctx: Situation, method: str, path: str) -> httpx.Response:
    ctx.double.enforce_set_webhook_rate_limit = False
    _, connection_id = await ctx.connection()
    seen = len(ctx.double.calls_for("getWebhookInfo"))
    ctx.double.delay_next("getWebhookInfo", 1.0)
    other = asyncio.create_task(ctx.call("POST", fill(RESYNC, connection_id)))
    for _ in range(200):
        if len(ctx.double.calls_for("getWebhookInfo")) > seen:
            break
        await asyncio.sleep(0.01)
    response = await ctx.call(method, fill(path, connection_id), json=first_example(method, path))
    assert (await other).status_code == 200
    return response


@provokes(
    ("GET", HEALTH, 503),
    ("POST", ROTATE, 503),
    ("PUT", TOKEN, 503),
    ("POST", RESYNC, 503),
    ("DELETE", ONE, 503),
)
async def with_redis_stopped(ctx: Situation, method: str, path: str) -> httpx.Response:
    redis = RedisProcess(ctx.tmp_path)
    redis.start()
    ctx.stack.callback(redis.stop)
    client = await ctx.app(redis_url=redis.url)
    _, connection_id = await ctx.connection(client)
    redis.stop()
    return await ctx.call(
        method, fill(path, connection_id), json=first_example(method, path), client=client
    )


# Inbox


@provokes(("GET", "/api/v1/contacts", 200), ("GET", "/api/v1/conversations", 200))
async def inbox_listed(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, path)


@provokes(("GET", MESSAGES, 200))
async def conversation_read(ctx: Situation, method: str, path: str) -> httpx.Response:
    key, secret = await credentials(ctx)
    assert (
        await post_update(ctx.client, key, secret, load_update("01_message"))
    ).status_code == 200
    (conversation,) = (await ctx.call("GET", "/api/v1/conversations")).json()["items"]
    return await ctx.call(method, fill(path, conversation["id"]))


# Outbound messages

SEND = "/api/v1/messages"
ONE_MESSAGE = f"{SEND}/{{message_id}}"
APPROVE = f"{ONE_MESSAGE}/approve"
REJECT = f"{ONE_MESSAGE}/reject"
CANCEL = f"{ONE_MESSAGE}/cancel"


async def pending_message(ctx: Situation, **extra: Any) -> dict[str, Any]:
    """A message the workspace's admin token requested, waiting for approval."""
    _, connection_id = await ctx.connection()
    body = {"connection_id": connection_id, "chat_id": 501, "text": "Hello", **extra}
    response = await ctx.call("POST", SEND, json=body)
    assert response.status_code == 202, response.text
    sent: dict[str, Any] = response.json()
    return sent


@provokes(("POST", SEND, 202), ("GET", SEND, 200), ("GET", "/api/v1/audit", 200))
async def message_requested(ctx: Situation, method: str, path: str) -> httpx.Response:
    if method == "GET":
        await pending_message(ctx)
        return await ctx.call(method, path)
    _, connection_id = await ctx.connection()
    return await ctx.call(
        method, path, json={"connection_id": connection_id, "chat_id": 501, "text": "Hi"}
    )


@provokes(("POST", SEND, 200), ("POST", SEND, 409))
async def message_requested_again(ctx: Situation, method: str, path: str) -> httpx.Response:
    _, connection_id = await ctx.connection()
    body = {"connection_id": connection_id, "chat_id": 501, "text": "Hi"}
    key = {"Idempotency-Key": f"case-{uuid.uuid4()}"}
    first = await ctx.client.post(path, json=body, headers={**ctx.workspace.headers(), **key})
    assert first.status_code == 202
    again = {**body, "text": "Hi" if DOCUMENT_STATUS.get() == 200 else "Hello"}
    return await ctx.client.post(path, json=again, headers={**ctx.workspace.headers(), **key})


@provokes(("POST", SEND, 404))
async def message_to_an_unknown_connection(
    ctx: Situation, method: str, path: str
) -> httpx.Response:
    body = {"connection_id": str(uuid.uuid4()), "chat_id": 501, "text": "Hi"}
    return await ctx.call(method, path, json=body)


@provokes(("GET", ONE_MESSAGE, 200), ("POST", CANCEL, 200))
async def on_a_message(ctx: Situation, method: str, path: str) -> httpx.Response:
    message = await pending_message(ctx)
    return await ctx.call(method, fill(path, message["id"]))


@provokes(("POST", APPROVE, 200), ("POST", REJECT, 200), ("POST", APPROVE, 409))
async def decided_by_a_reviewer(ctx: Situation, method: str, path: str) -> httpx.Response:
    message = await pending_message(ctx)
    _, reviewer = await ctx.workspace.token(Role.reviewer)
    url = fill(path, message["id"])
    if DOCUMENT_STATUS.get() == 409:
        assert (await ctx.call(method, url, token=reviewer)).status_code == 200
    return await ctx.call(method, url, token=reviewer, json={"reason": "Off-brand"})


@provokes(("POST", REJECT, 409), ("POST", CANCEL, 409))
async def decided_twice(ctx: Situation, method: str, path: str) -> httpx.Response:
    message = await pending_message(ctx)
    assert (await ctx.call("POST", fill(CANCEL, message["id"]))).status_code == 200
    _, reviewer = await ctx.workspace.token(Role.reviewer)
    token = reviewer if path == REJECT else None
    return await ctx.call(method, fill(path, message["id"]), token=token, json={"reason": "No"})


@provokes(("POST", APPROVE, 403), ("POST", REJECT, 403))
async def decided_by_its_requester(ctx: Situation, method: str, path: str) -> httpx.Response:
    message = await pending_message(ctx)
    return await ctx.call(method, fill(path, message["id"]), json={"reason": "Mine"})


@provokes(("POST", REJECT, 404))
async def rejecting_an_unknown_message(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, fill(path, str(uuid.uuid4())), json={"reason": "No"})


# Broadcasts

BROADCASTS = "/api/v1/broadcasts"
ONE_BROADCAST = f"{BROADCASTS}/{{broadcast_id}}"
BROADCAST_MESSAGES = f"{ONE_BROADCAST}/messages"
APPROVE_BROADCAST = f"{ONE_BROADCAST}/approve"
REJECT_BROADCAST = f"{ONE_BROADCAST}/reject"
CANCEL_BROADCAST = f"{ONE_BROADCAST}/cancel"


async def broadcast_body(ctx: Situation) -> dict[str, Any]:
    """A broadcast request to the one contact of a new connection."""
    bot, connection_id = await ctx.connection()
    key, secret = webhook_credentials(ctx.double, bot)
    received = await post_update(ctx.client, key, secret, load_update("01_message"))
    assert received.status_code == 200
    contacts = await ctx.call("GET", "/api/v1/contacts", params={"connection_id": connection_id})
    contact_ids = [c["id"] for c in contacts.json()["items"]]
    return {
        "name": "Launch",
        "connection_id": connection_id,
        "text": "Hi",
        "contact_ids": contact_ids,
    }


async def pending_broadcast(ctx: Situation) -> dict[str, Any]:
    """A broadcast the workspace's admin token requested, waiting for approval."""
    response = await ctx.call("POST", BROADCASTS, json=await broadcast_body(ctx))
    assert response.status_code == 202, response.text
    broadcast: dict[str, Any] = response.json()
    return broadcast


@provokes(("POST", BROADCASTS, 202), ("GET", BROADCASTS, 200))
async def broadcast_requested(ctx: Situation, method: str, path: str) -> httpx.Response:
    if method == "GET":
        await pending_broadcast(ctx)
        return await ctx.call(method, path)
    return await ctx.call(method, path, json=await broadcast_body(ctx))


@provokes(("POST", BROADCASTS, 200), ("POST", BROADCASTS, 409))
async def broadcast_requested_again(ctx: Situation, method: str, path: str) -> httpx.Response:
    body = await broadcast_body(ctx)
    key = {"Idempotency-Key": f"case-{uuid.uuid4()}"}
    first = await ctx.client.post(path, json=body, headers={**ctx.workspace.headers(), **key})
    assert first.status_code == 202
    again = {**body, "text": "Hi" if DOCUMENT_STATUS.get() == 200 else "Hello"}
    return await ctx.client.post(path, json=again, headers={**ctx.workspace.headers(), **key})


@provokes(("POST", BROADCASTS, 404))
async def broadcast_through_an_unknown_connection(
    ctx: Situation, method: str, path: str
) -> httpx.Response:
    body = {**await broadcast_body(ctx), "connection_id": str(uuid.uuid4())}
    return await ctx.call(method, path, json=body)


@provokes(
    ("GET", ONE_BROADCAST, 200),
    ("GET", BROADCAST_MESSAGES, 200),
    ("POST", CANCEL_BROADCAST, 200),
)
async def on_a_broadcast(ctx: Situation, method: str, path: str) -> httpx.Response:
    broadcast = await pending_broadcast(ctx)
    return await ctx.call(method, fill(path, broadcast["id"]))


@provokes(
    ("POST", APPROVE_BROADCAST, 200),
    ("POST", REJECT_BROADCAST, 200),
    ("POST", APPROVE_BROADCAST, 409),
)
async def broadcast_decided_by_a_reviewer(ctx: Situation, method: str, path: str) -> httpx.Response:
    broadcast = await pending_broadcast(ctx)
    _, reviewer = await ctx.workspace.token(Role.reviewer)
    url = fill(path, broadcast["id"])
    if DOCUMENT_STATUS.get() == 409:
        assert (await ctx.call(method, url, token=reviewer)).status_code == 200
    return await ctx.call(method, url, token=reviewer, json={"reason": "Off-brand"})


@provokes(("POST", REJECT_BROADCAST, 409), ("POST", CANCEL_BROADCAST, 409))
async def broadcast_decided_twice(ctx: Situation, method: str, path: str) -> httpx.Response:
    broadcast = await pending_broadcast(ctx)
    cancelled = await ctx.call("POST", fill(CANCEL_BROADCAST, broadcast["id"]))
    assert cancelled.status_code == 200
    _, reviewer = await ctx.workspace.token(Role.reviewer)
    token = reviewer if path == REJECT_BROADCAST else None
    return await ctx.call(method, fill(path, broadcast["id"]), token=token, json={"reason": "No"})


@provokes(("POST", APPROVE_BROADCAST, 403), ("POST", REJECT_BROADCAST, 403))
async def broadcast_decided_by_its_requester(
    ctx: Situation, method: str, path: str
) -> httpx.Response:
    broadcast = await pending_broadcast(ctx)
    return await ctx.call(method, fill(path, broadcast["id"]), json={"reason": "Mine"})


@provokes(("POST", REJECT_BROADCAST, 404))
async def rejecting_an_unknown_broadcast(ctx: Situation, method: str, path: str) -> httpx.Response:
    return await ctx.call(method, fill(path, str(uuid.uuid4())), json={"reason": "No"})


# Webhook


@provokes(("POST", WEBHOOK_PATH, 200))
async def update_stored(ctx: Situation, method: str, path: str) -> httpx.Response:
    key, secret = await credentials(ctx)
    return await post_update(ctx.client, key, secret, load_update("01_message"))


@provokes(("POST", WEBHOOK_PATH, 400))
async def not_an_update(ctx: Situation, method: str, path: str) -> httpx.Response:
    key, secret = await credentials(ctx)
    return await post_update(ctx.client, key, secret, {"update_id": -1})


@provokes(("POST", WEBHOOK_PATH, 401))
async def wrong_secret(ctx: Situation, method: str, path: str) -> httpx.Response:
    key, _ = await credentials(ctx)
    return await post_update(ctx.client, key, "not-the-secret", load_update("01_message"))


@provokes(("POST", WEBHOOK_PATH, 403))
async def outside_telegrams_ranges(ctx: Situation, method: str, path: str) -> httpx.Response:
    client = await ctx.app(ingress_telegram_ips_only=True)
    key, secret = await credentials(ctx, client)
    return await post_update(client, key, secret, load_update("01_message"))


@provokes(("POST", WEBHOOK_PATH, 413))
async def too_large(ctx: Situation, method: str, path: str) -> httpx.Response:
    key, secret = await credentials(ctx)
    return await post_update(ctx.client, key, secret, b" " * (1024 * 1024 + 1))


@provokes(("POST", WEBHOOK_PATH, 415))
async def not_json(ctx: Situation, method: str, path: str) -> httpx.Response:
    key, secret = await credentials(ctx)
    return await post_update(ctx.client, key, secret, b"update_id=1", "text/plain")


@provokes(("POST", WEBHOOK_PATH, 429))
async def over_the_failed_auth_limit(ctx: Situation, method: str, path: str) -> httpx.Response:
    client = await ctx.app(ingress_failed_auth_per_minute=1)
    key, _ = await credentials(ctx, client)
    first = await post_update(client, key, "wrong", load_update("01_message"))
    assert first.status_code == 401
    return await post_update(client, key, "wrong", load_update("01_message"))


@provokes(("POST", WEBHOOK_PATH, 503))
async def webhook_with_redis_stopped(ctx: Situation, method: str, path: str) -> httpx.Response:
    redis = RedisProcess(ctx.tmp_path)
    redis.start()
    ctx.stack.callback(redis.stop)
    client = await ctx.app(redis_url=redis.url)
    key, secret = await credentials(ctx, client)
    redis.stop()
    return await post_update(client, key, secret, load_update("01_message"))


@pytest.fixture
async def situation(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    telegram_double: TelegramDouble,
    settings: Settings,
    tmp_path: Path,
    db_session_factory: async_sessionmaker[AsyncSession],
    redis_client: Redis,
) -> AsyncIterator[Situation]:
    async with AsyncExitStack() as stack:
        yield Situation(app_client, workspace, telegram_double, settings, tmp_path, stack)


def test_every_case_provokes_a_documented_status() -> None:
    assert set(CASES) <= set(DOCUMENTED)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    DOCUMENTED,
    ids=[f"{status}-{method}-{path}" for method, path, status in DOCUMENTED],
)
async def test_every_documented_status_is_answered(
    method: str, path: str, status: int, situation: Situation
) -> None:
    provoke = CASES.get((method, path, status)) or GENERIC.get(status)
    assert provoke is not None, f"nothing here provokes {status} from {method} {path}"
    DOCUMENT_STATUS.set(status)
    response = await provoke(situation, method, path)
    assert response.status_code == status, response.text
    documented = DOC["paths"][path][method.lower()]["responses"][str(status)]
    if status < 400:
        assert response.headers["content-type"] == "application/json"
        return
    model = NotReady if path == "/ready" else Error
    body = model.model_validate(response.json())
    assert set(response.json()) == set(model.model_fields)
    assert body.error.code in documented_codes(method, path, status)
    if status == 429 or path == WEBHOOK_PATH:
        for header in documented.get("headers", {}):
            assert header.lower() in response.headers
