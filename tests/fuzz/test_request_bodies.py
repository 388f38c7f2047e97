"""Request bodies the fuzzing found answered outside the API document, pinned."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import WorkspaceFixture


@pytest.mark.parametrize(
    "body",
    [b"\xff", b'{"bot_token": "\xe9"}', b"\xc3"],
    ids=["lone-byte", "latin-1-inside-json", "cut-utf-8"],
)
async def test_a_body_that_is_not_utf_8_is_a_422_like_any_unreadable_body(
    body: bytes, app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    response = await app_client.post(
        "/api/v1/connections/telegram",
        content=body,
        headers={**workspace.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "validation_error",
            "message": "body: not valid UTF-8 JSON",
            "field": "body",
        }
    }


async def test_a_body_that_is_not_json_is_the_same_kind_of_422(
    app_client: httpx.AsyncClient, workspace: WorkspaceFixture
) -> None:
    response = await app_client.post(
        "/api/v1/connections/telegram",
        content=b"{not json",
        headers={**workspace.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    # The field is the body, not the character offset where parsing stopped.
    assert response.json() == {
        "error": {"code": "validation_error", "message": "body: not valid JSON", "field": "body"}
    }
