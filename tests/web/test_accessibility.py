"""axe-core on every page of the settings UI, at desktop width and at 375 px."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Page, expect

from app.auth.models import Role
from tests.web.conftest import DESKTOP, PHONE, UiService
from tests.web.test_approvals_and_inbox_pages import conversation_of, receive
from tests.web.test_connections_pages import TAKEN_OVER

AXE = Axe()
BLOCKING = {"serious", "critical"}


async def assert_accessible(page: Page, where: str) -> None:
    for viewport in (DESKTOP, PHONE):
        await page.set_viewport_size(viewport)
        results = await AXE.run(page)
        blocking = [
            f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
            for v in results.response["violations"]
            if v["impact"] in BLOCKING
        ]
        assert blocking == [], f"{where} at {viewport['width']} px: {blocking}"
        # Usable at 375 px: nothing wider than the screen.
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{where} scrolls sideways at {viewport['width']} px"
    await page.set_viewport_size(DESKTOP)


Step = Callable[[UiService, Page], Awaitable[None]]


async def sign_in_with_an_error(ui: UiService, page: Page) -> None:
    await page.goto(ui.ui_url)
    await page.get_by_label("API token").fill("wsk_" + "y" * 40)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_be_visible()


async def connections_with_a_takeover(ui: UiService, page: Page) -> None:
    bot, _ = await ui.connect(first_name="Taken Bot")
    await ui.connect(first_name="Healthy Bot")
    ui.double.set_webhook_url(bot, TAKEN_OVER)
    await sign_in(ui, page)
    await expect(page.locator(".health").first).not_to_contain_text("Checking")
    await expect(page.locator(".health").last).not_to_contain_text("Checking")


async def add_connection_with_an_error(ui: UiService, page: Page) -> None:
    await sign_in(ui, page, "#/connections/new")
    await page.get_by_label("Bot token").fill("123:short")
    await page.get_by_role("button", name="Connect bot").click()
    await expect(page.get_by_role("alert")).to_be_visible()


async def connection_page_with_disconnect_confirmation(ui: UiService, page: Page) -> None:
    _, connection = await ui.connect(first_name="Some Bot")
    await sign_in(ui, page, f"#/connections/{connection['id']}")
    await expect(page.locator("#health-result")).to_contain_text("Healthy")
    await page.get_by_role("button", name="Disconnect Some Bot").click()
    await expect(page.get_by_role("button", name="Yes, disconnect")).to_be_visible()


async def approvals_with_a_reject_form(ui: UiService, page: Page) -> None:
    bot, connection = await ui.connect()
    await receive(ui, bot, "Can I change my address?")
    conversation = await conversation_of(ui)
    _, sender = await ui.token(Role.sender, "crm")
    await ui.request_message(
        sender, connection["id"], conversation_id=conversation["id"], text="Yes"
    )
    await ui.request_message(sender, connection["id"], chat_id=42, text="Hello")
    await sign_in(ui, page, "#/approvals")
    await expect(page.locator(".context li").first).to_contain_text("change my address")
    await page.get_by_role("button", name="Reject…").first.click()
    await expect(page.get_by_label("Reason for rejecting")).to_be_visible()


async def inbox_with_a_conversation(ui: UiService, page: Page) -> None:
    bot, _ = await ui.connect()
    await receive(ui, bot, "hello")
    conversation = await conversation_of(ui)
    await sign_in(ui, page, f"#/inbox/{conversation['id']}")
    await expect(page.locator(".message-text")).to_have_text(["hello"])


async def sign_in(ui: UiService, page: Page, hash_: str = "") -> None:
    await page.goto(ui.ui_url)
    await page.get_by_label("API token").fill(ui.workspace.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", level=1, name="Connections").wait_for()
    if hash_:
        await page.goto(ui.ui_url + hash_)
        await page.locator("h1").wait_for()


PAGES: dict[str, Step] = {
    "sign-in": sign_in_with_an_error,
    "connections": connections_with_a_takeover,
    "add-connection": add_connection_with_an_error,
    "connection": connection_page_with_disconnect_confirmation,
    "approvals": approvals_with_a_reject_form,
    "inbox": inbox_with_a_conversation,
}


@pytest.mark.parametrize("name", PAGES)
async def test_no_serious_or_critical_accessibility_violation(ui: UiService, name: str) -> None:
    page = await ui.new_page()
    # The page itself never trips its own Content-Security-Policy (no inline
    # script or style anywhere), and never fails in its script.
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await PAGES[name](ui, page)
    await assert_accessible(page, name)
    # The refused token (401) and the malformed bot token (422) are the steps'
    # own doing; the browser logs those answers as errors.
    expected = ("status of 401 (Unauthorized)", "status of 422 (Unprocessable Entity)")
    problems = [p for p in problems if not p.endswith(expected)]
    assert problems == []


async def test_the_check_itself_catches_an_unlabelled_field_and_poor_contrast(
    ui: UiService,
) -> None:
    page = await ui.new_page()
    await page.set_content(
        "<html lang='en'><title>t</title><main><input type='text'>"
        "<p style='color:#bbb;background:#fff'>faint</p></main></html>"
    )
    results = await AXE.run(page)
    found = {v["id"] for v in results.response["violations"] if v["impact"] in BLOCKING}
    assert {"label", "color-contrast"} <= found
