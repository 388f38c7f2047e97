from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
from sqlalchemy import select

from app.auth.models import ApiToken, Role
from app.auth.tokens import hash_api_token
from tests.conftest import BackendApp, WorkspaceFixture


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, object] = body["error"]
    return error


async def test_admin_creates_token_shown_once_and_stored_as_hash(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    response = await app_client.post(
        "/api/v1/tokens", json={"name": "ci", "role": "sender"}, headers=workspace.headers()
    )
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "name", "role", "token", "created_at"}
    assert created["token"].startswith("wsk_") and created["role"] == "sender"

    listed = await app_client.get("/api/v1/tokens", headers=workspace.headers())
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert {item["id"] for item in items} >= {created["id"]}
    assert created["token"] not in listed.text

    async with workspace.session_factory() as session:
        row = (
            await session.execute(select(ApiToken).where(ApiToken.id == uuid.UUID(created["id"])))
        ).scalar_one()
    assert row.token_hash == hash_api_token(created["token"])
    assert created["token"] not in repr(row)

    # The new token works for what its role allows.
    me = await app_client.get(
        "/api/v1/tokens", headers={"Authorization": f"Bearer {created['token']}"}
    )
    assert_error(me, 403, "forbidden")


async def test_missing_invalid_and_malformed_tokens_are_401(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    assert_error(await app_client.get("/api/v1/tokens"), 401, "unauthenticated")
    bad = {"Authorization": "Bearer wsk_" + "x" * 43}
    assert_error(await app_client.get("/api/v1/tokens", headers=bad), 401, "unauthenticated")
    basic = {"Authorization": "Basic abc"}
    assert_error(await app_client.get("/api/v1/tokens", headers=basic), 401, "unauthenticated")


async def test_revoked_token_is_401(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    token_id, secret = await workspace.token(Role.admin, "to revoke")
    ok = await app_client.get("/api/v1/tokens", headers=workspace.headers(secret))
    assert ok.status_code == 200
    revoked = await app_client.delete(f"/api/v1/tokens/{token_id}", headers=workspace.headers())
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    after = await app_client.get("/api/v1/tokens", headers=workspace.headers(secret))
    assert_error(after, 401, "unauthenticated")


async def test_reviewer_and_sender_cannot_manage_tokens(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    for role in (Role.reviewer, Role.sender):
        _, secret = await workspace.token(role)
        response = await app_client.post(
            "/api/v1/tokens",
            json={"name": "x", "role": "admin"},
            headers=workspace.headers(secret),
        )
        assert_error(response, 403, "forbidden")


async def test_token_of_another_workspace_answers_404_like_a_missing_one(
    app_client: httpx.AsyncClient,
    workspace: WorkspaceFixture,
    other_workspace: WorkspaceFixture,
) -> None:
    foreign_id, foreign_secret = await other_workspace.token(Role.sender)
    foreign = await app_client.delete(f"/api/v1/tokens/{foreign_id}", headers=workspace.headers())
    missing = await app_client.delete(f"/api/v1/tokens/{uuid.uuid4()}", headers=workspace.headers())
    assert_error(foreign, 404, "not_found")
    assert foreign.json() == missing.json()
    # And the foreign token was not revoked by the attempt.
    still = await app_client.get("/api/v1/tokens", headers=other_workspace.headers())
    assert foreign_secret not in still.text
    assert any(
        item["id"] == str(foreign_id) and item["revoked_at"] is None
        for item in still.json()["items"]
    )
    listed = await app_client.get("/api/v1/tokens", headers=workspace.headers())
    assert str(foreign_id) not in listed.text


async def test_token_list_paginates_with_cursor(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    for index in range(5):
        await workspace.token(Role.sender, f"t{index}")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await app_client.get(
            "/api/v1/tokens", params=params, headers=workspace.headers()
        )
        assert response.status_code == 200
        body = response.json()
        assert len(body["items"]) <= 2
        seen.extend(item["id"] for item in body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 and len(set(seen)) == 6  # 5 plus the initial admin token
    assert pages == 3


async def test_validation_errors_name_the_field(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    response = await app_client.post(
        "/api/v1/tokens", json={"name": "x", "role": "owner"}, headers=workspace.headers()
    )
    error = assert_error(response, 422, "validation_error")
    assert error["field"] == "role"
    bad_limit = await app_client.get(
        "/api/v1/tokens", params={"limit": "500"}, headers=workspace.headers()
    )
    assert assert_error(bad_limit, 422, "validation_error")["field"] == "limit"
    bad_cursor = await app_client.get(
        "/api/v1/tokens", params={"cursor": "nope"}, headers=workspace.headers()
    )
    assert assert_error(bad_cursor, 422, "validation_error")["field"] == "cursor"


async def test_the_last_admin_token_cannot_be_revoked(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    listed = await app_client.get("/api/v1/tokens", headers=workspace.headers())
    (admin,) = [item for item in listed.json()["items"] if item["role"] == "admin"]
    refused = await app_client.delete(f"/api/v1/tokens/{admin['id']}", headers=workspace.headers())
    assert_error(refused, 409, "last_admin_token")
    still = await app_client.get("/api/v1/tokens", headers=workspace.headers())
    assert still.status_code == 200
    # With a second admin, the first can go.
    await workspace.token(Role.admin, "second admin")
    revoked = await app_client.delete(f"/api/v1/tokens/{admin['id']}", headers=workspace.headers())
    assert revoked.status_code == 200


async def _revocation_rounds(
    backend_app: BackendApp, *, each_other: bool
) -> AsyncIterator[list[httpx.Response]]:
    """Ten rounds in which the workspace's only two admin tokens are revoked at once
    (each by the other, or each by itself); yields each round's two responses."""
    client, workspace = backend_app.client, backend_app.workspace
    (initial,) = (await client.get("/api/v1/tokens", headers=workspace.headers())).json()["items"]
    survivor = await workspace.token(Role.admin, "first")
    revoked = await client.delete(
        f"/api/v1/tokens/{initial['id']}", headers=workspace.headers(survivor[1])
    )
    assert revoked.status_code == 200
    for round_ in range(10):
        pair = (survivor, await workspace.token(Role.admin, f"round {round_}"))
        # Used once already, so neither request writes last_used_at: the two
        # requests race on the revocations alone.
        for _token_id, secret in pair:
            assert (
                await client.get("/api/v1/tokens", headers=workspace.headers(secret))
            ).is_success
        targets = pair[::-1] if each_other else pair
        responses = list(
            await asyncio.gather(
                *(
                    client.delete(
                        f"/api/v1/tokens/{target[0]}", headers=workspace.headers(caller[1])
                    )
                    for caller, target in zip(pair, targets, strict=True)
                )
            )
        )
        statuses = [response.status_code for response in responses]
        assert statuses.count(200) == 1, [response.text for response in responses]
        yield responses
        (survivor,) = [
            token
            for token, response in zip(targets, responses, strict=True)
            if response.status_code != 200
        ]
        listed = await client.get("/api/v1/tokens", headers=workspace.headers(survivor[1]))
        live = [
            item["id"]
            for item in listed.json()["items"]
            if item["role"] == "admin" and item["revoked_at"] is None
        ]
        assert live == [str(survivor[0])]


async def test_two_admins_revoking_themselves_at_once_leave_exactly_one(
    backend_app: BackendApp,
) -> None:
    async for responses in _revocation_rounds(backend_app, each_other=False):
        (refused,) = [r for r in responses if r.status_code != 200]
        assert_error(refused, 409, "last_admin_token")


async def test_two_admins_revoking_each_other_at_once_leave_exactly_one(
    backend_app: BackendApp,
) -> None:
    async for responses in _revocation_rounds(backend_app, each_other=True):
        (refused,) = [r for r in responses if r.status_code != 200]
        if refused.status_code == 401:
            # The winner committed before the loser's own token was even checked.
            assert_error(refused, 401, "unauthenticated")
        else:
            assert_error(refused, 409, "last_admin_token")


async def test_a_crafted_cursor_is_422_not_500(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    import base64
    import json

    for value in ("2024-01-01T00:00:00", "9999-12-31T23:59:59-23:00"):
        raw = json.dumps([value, str(uuid.uuid4())]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        response = await app_client.get(
            "/api/v1/tokens", params={"cursor": cursor}, headers=workspace.headers()
        )
        assert assert_error(response, 422, "validation_error")["field"] == "cursor"
