from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.logging import configure_logging
from tests.conftest import WorkspaceFixture, running_app

BOT_TOKEN = "123456789:AAH" + "x" * 32


async def test_health_answers_without_auth(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_every_response_carries_a_request_id(app_client: httpx.AsyncClient) -> None:
    first = await app_client.get("/health")
    second = await app_client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    echoed = await app_client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    # An id that could inject content into logs is replaced, not echoed.
    hostile = await app_client.get("/health", headers={"X-Request-ID": "a b" + "x" * 80})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


async def test_unknown_route_uses_the_error_shape(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_ready_reports_database_and_redis(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_ready_is_503_naming_redis_when_redis_is_unreachable(
    settings: Settings, db_session_factory: object
) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with running_app(broken) as (_app, client):
        response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "not_ready"
    assert body["error"]["field"] == "redis"
    assert body["checks"] == {"database": "ok", "redis": "unavailable"}


async def test_ready_is_503_naming_the_database_when_it_is_unreachable(
    settings: Settings, tmp_path: Path
) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}
    )
    async with running_app(broken) as (_app, client):
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unavailable"


async def test_unexpected_error_is_500_without_internals_and_logged_with_request_id(
    settings: Settings, db_session_factory: object, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json_output=True, level="INFO")
    try:
        async with running_app(settings) as (app, client):

            @app.get("/boom")
            async def boom() -> None:
                raise RuntimeError(f"internal detail {BOT_TOKEN}")

            capsys.readouterr()
            response = await client.get("/boom", headers={"X-Request-ID": "rid-42"})
        err = capsys.readouterr().err
    finally:
        configure_logging(json_output=False, level="DEBUG")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "An unexpected error occurred."}
    }
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = [line for line in lines if line.get("event") == "unhandled_error"]
    assert failures and failures[0]["request_id"] == "rid-42"
    assert BOT_TOKEN not in err


def test_settings_repr_hides_connection_urls(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path,
        "postgresql+asyncpg://svc:hunter2@db.internal/integrations",
        redis_url="redis://:s3cret@cache.internal:6379/0",
    )
    text = repr(settings)
    assert "hunter2" not in text and "s3cret" not in text
    assert "vault_keys" in text and "A" * 42 not in text


async def test_production_does_not_serve_the_interactive_docs(
    settings: Settings, db_session_factory: object
) -> None:
    production = settings.model_copy(update={"app_env": "production"})
    async with running_app(production) as (_app, client):
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404
        assert (await client.get("/health")).status_code == 200
    async with running_app(settings) as (_app, client):
        assert (await client.get("/openapi.json")).status_code == 200


def test_env_example_lists_every_setting_with_a_parseable_default() -> None:
    from app.config import Settings

    example = Path(__file__).resolve().parent.parent / ".env.example"
    listed = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    assert {name.upper() for name in Settings.model_fields} == listed
    # The file as written is a valid configuration.
    values = {
        line.split("=", 1)[0].lower(): line.split("=", 1)[1]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#") and "=" in line and line.split("=", 1)[1]
    }
    assert Settings(_env_file=None, **values).ingress_failed_auth_per_minute == 20  # type: ignore[call-arg]


async def test_a_trailing_slash_is_404_in_the_error_shape_not_a_redirect(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    for path in ("/api/v1/connections/", "/api/v1/tokens/", "/health/"):
        response = await app_client.get(path, headers=workspace.headers())
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
        assert "location" not in response.headers
