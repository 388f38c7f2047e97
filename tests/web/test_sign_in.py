"""Signing in and out of the settings UI, and the headers every UI response carries."""

from __future__ import annotations

import re

import pytest

from app.auth.models import Role
from tests.conftest import BackendApp
from tests.web.conftest import UiService

UI_PATHS = ["/ui/", "/ui/static/app.js", "/ui/static/app.css", "/ui/static/missing.js", "/ui"]


@pytest.mark.parametrize("path", UI_PATHS)
async def test_every_ui_response_forbids_framing_inline_script_and_referrers(
    ui: UiService, path: str
) -> None:
    response = await ui.api.get(path)
    assert response.status_code in {200, 307, 404}
    policy = response.headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_ui_assets_are_served_by_the_service_itself(ui: UiService) -> None:
    page = await ui.api.get("/ui/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="static/app.js"' in page.text
    # No asset from anywhere else: no CDN, nothing to fetch from the internet.
    assert "http://" not in page.text and "https://" not in page.text
    script = await ui.api.get("/ui/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    # Values reach the page as text: no HTML-parsing sink anywhere in the script.
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script.text)
    missing = await ui.api.get("/ui/static/../main.py")
    assert missing.status_code == 404
    bare = await ui.api.get("/ui")
    assert bare.status_code == 307 and bare.headers["location"] == "/ui/"


async def test_the_browser_enforces_the_policy_on_inline_script(ui: UiService) -> None:
    page = await ui.new_page()
    violations: list[str] = []
    page.on(
        "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
    )
    await page.goto(ui.ui_url)
    await page.get_by_role("heading", name="Sign in").wait_for()
    ran = await page.evaluate(
        """() => {
            const script = document.createElement('script');
            script.textContent = 'window.inlineRan = true';
            document.body.append(script);
            return window.inlineRan === true;
        }"""
    )
    assert ran is False
    assert violations


async def test_sign_in_keeps_the_token_in_session_storage_and_sign_out_forgets_it(
    ui: UiService,
) -> None:
    sent_headers: list[str | None] = []
    page = await ui.new_page()
    page.on(
        "request",
        lambda r: sent_headers.append(r.headers.get("authorization")) if "/api/" in r.url else None,
    )
    await page.goto(ui.ui_url)
    await page.get_by_label("API token").fill(ui.workspace.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", level=1, name="Connections").wait_for()
    await page.get_by_text("initial admin · admin · Acme").wait_for()

    stored = await page.evaluate("() => Object.values(sessionStorage)")
    assert stored == [ui.workspace.admin_token]
    assert await page.evaluate("() => localStorage.length") == 0
    assert await ui.context.cookies() == []
    assert ui.workspace.admin_token not in page.url
    assert f"Bearer {ui.workspace.admin_token}" in sent_headers

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", level=1, name="Sign in").wait_for()
    assert await page.evaluate("() => sessionStorage.length") == 0
    assert await page.get_by_role("link", name="Connections").is_hidden()


async def test_a_wrong_token_is_refused_on_the_sign_in_page(ui: UiService) -> None:
    page = await ui.new_page()
    await page.goto(ui.ui_url)
    await page.get_by_label("API token").fill("wsk_" + "x" * 40)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").get_by_text("did not accept this API token").wait_for()
    assert await page.evaluate("() => sessionStorage.length") == 0
    assert await page.get_by_label("API token").input_value() == ""


async def test_a_revoked_token_returns_to_sign_in_with_the_reason(ui: UiService) -> None:
    token_id, reviewer = await ui.token(Role.reviewer, "night shift")
    page = await ui.signed_in(reviewer)
    revoked = await ui.api.delete(f"/api/v1/tokens/{token_id}", headers=ui.workspace.headers())
    assert revoked.status_code == 200
    await page.get_by_role("link", name="Inbox").click()
    alert = page.get_by_role("alert")
    await alert.get_by_text("no longer accepts your API token").wait_for()
    assert "revoked" in (await alert.inner_text())
    await page.get_by_role("heading", level=1, name="Sign in").wait_for()
    assert await page.evaluate("() => sessionStorage.length") == 0


async def test_me_names_the_calling_token_and_its_role(ui: UiService) -> None:
    token_id, sender = await ui.token(Role.sender, "crm")
    answer = await ui.api.get("/api/v1/me", headers=ui.workspace.headers(sender))
    assert answer.status_code == 200
    assert answer.json() == {
        "token_id": token_id,
        "name": "crm",
        "role": "sender",
        "workspace": {"id": str(ui.workspace.id), "name": "Acme"},
    }
    refused = await ui.api.get("/api/v1/me")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthenticated"


async def test_the_ui_and_me_are_served_on_both_backends(backend_app: BackendApp) -> None:
    """The embedded default (`make run`: SQLite, no Redis) serves the pages too."""
    page = await backend_app.client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    me = await backend_app.client.get("/api/v1/me", headers=backend_app.workspace.headers())
    assert me.status_code == 200
    assert (me.json()["name"], me.json()["role"]) == ("initial admin", "admin")


async def test_the_skip_link_moves_focus_to_the_content_and_keeps_the_view(
    ui: UiService,
) -> None:
    page = await ui.signed_in(hash_="#/inbox")
    # A fresh load of the view: focus starts at the top of the document.
    await page.reload()
    await page.get_by_role("heading", level=1, name="Inbox").wait_for()
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    assert page.url.endswith("#/inbox")
    await page.reload()
    await page.get_by_role("heading", level=1, name="Inbox").wait_for()
