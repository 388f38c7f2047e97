"""Settings > Connections in the browser: adding a bot, health, maintenance, disconnect."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from app.auth.models import Role
from tests.conftest import new_workspace
from tests.connections.helpers import connect_bot
from tests.web.conftest import UiService

TAKEN_OVER = "https://other-app.example.net/telegram/hook"


async def open_add_connection(ui: UiService) -> Page:
    page = await ui.signed_in()
    await page.get_by_role("link", name="Add connection").click()
    await page.get_by_role("heading", level=1, name="Add connection: Telegram").wait_for()
    return page


async def test_adding_a_good_token_shows_the_bot_and_clears_the_field(ui: UiService) -> None:
    bot = ui.double.add_bot(username="acme_support_bot", first_name="Acme Support")
    assert bot.token is not None
    page = await open_add_connection(ui)
    guide = page.get_by_role("link", name="How BotFather gives you a token")
    assert (await guide.get_attribute("href") or "").startswith("https://core.telegram.org/")
    assert await guide.get_attribute("rel") == "noopener noreferrer"

    await page.get_by_label("Bot token").fill(bot.token)
    await page.get_by_role("button", name="Connect bot").click()
    result = page.get_by_role("status").filter(has_text="Connected")
    await expect(result).to_contain_text("Bot: Acme Support (@acme_support_bot)")
    assert await page.get_by_label("Bot token").input_value() == ""
    assert bot.token not in await page.content()

    await result.get_by_role("link", name="Open Acme Support").click()
    await page.get_by_role("heading", level=1, name="Acme Support").wait_for()
    listed = await ui.api.get("/api/v1/connections", headers=ui.workspace.headers())
    assert [c["bot"]["username"] for c in listed.json()["items"]] == ["acme_support_bot"]


async def test_a_token_telegram_rejects_shows_the_reason_and_the_hint(ui: UiService) -> None:
    page = await open_add_connection(ui)
    # A token of the right shape that Telegram does not know.
    await page.get_by_label("Bot token").fill("7999999999:AAFq3ZxUnknownUnknownUnknownUnknown01")
    await page.get_by_role("button", name="Connect bot").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Telegram does not accept this bot token")
    await expect(alert).to_contain_text(
        "Telegram rejected this token. Copy it again from @BotFather"
    )
    assert await page.get_by_label("Bot token").input_value() == ""
    assert "AAFq3ZxUnknown" not in await page.content()
    await ui.shoot(page, "add-connection-error")
    listed = await ui.api.get("/api/v1/connections", headers=ui.workspace.headers())
    assert listed.json()["items"] == []


async def test_a_bot_of_another_workspace_says_so_without_naming_it(ui: UiService) -> None:
    other = await new_workspace(ui.workspace.session_factory, "Globex")
    bot, _ = await connect_bot(ui.api, other, ui.double)
    assert bot.token is not None
    page = await open_add_connection(ui)
    await page.get_by_label("Bot token").fill(bot.token)
    await page.get_by_role("button", name="Connect bot").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("already connected to another workspace")
    assert "Globex" not in await alert.inner_text()
    assert await page.get_by_label("Bot token").input_value() == ""


async def test_add_connection_works_with_the_keyboard_alone(ui: UiService) -> None:
    bot = ui.double.add_bot(first_name="Keyboard Bot", username="keyboard_bot")
    assert bot.token is not None
    page = await ui.signed_in()

    async def tab_to(description: str, check: str) -> None:
        for _ in range(25):
            await page.keyboard.press("Tab")
            if await page.evaluate(check):
                return
        raise AssertionError(f"Tab never reached {description}")

    await tab_to(
        "the Add connection link", "document.activeElement.textContent === 'Add connection'"
    )
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", level=1, name="Add connection: Telegram").wait_for()
    await tab_to("the bot token field", "document.activeElement.id === 'bot-token'")
    await page.keyboard.type(bot.token)
    await tab_to("the name field", "document.activeElement.id === 'connection-name'")
    await page.keyboard.type("Front desk")
    await tab_to("the Connect button", "document.activeElement.textContent === 'Connect bot'")
    # A visible focus ring on the focused control.
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    await page.keyboard.press("Enter")
    result = page.get_by_role("status").filter(has_text="Connected")
    await expect(result).to_contain_text("Keyboard Bot (@keyboard_bot)")
    # Focus moved to the outcome, and on from there to the new connection.
    assert await page.evaluate("document.activeElement.textContent") == "Connected"
    await tab_to(
        "the link to the connection", "document.activeElement.textContent === 'Open Front desk'"
    )
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", level=1, name="Front desk").wait_for()


async def test_the_list_shows_a_webhook_takeover_as_action_required_with_its_hint(
    ui: UiService,
) -> None:
    _, healthy = await ui.connect(first_name="Healthy Bot", username="healthy_bot")
    taken_bot, taken = await ui.connect(first_name="Taken Bot", username="taken_bot")
    ui.double.set_webhook_url(taken_bot, TAKEN_OVER)
    page = await ui.signed_in()
    healthy_card = page.locator(f"[data-connection-id='{healthy['id']}']")
    taken_card = page.locator(f"[data-connection-id='{taken['id']}']")
    await expect(healthy_card.locator(".health")).to_contain_text("Healthy")
    await expect(healthy_card).to_contain_text("@healthy_bot (Healthy Bot)")
    await expect(healthy_card).to_contain_text("webhook")
    await expect(taken_card.locator(".health")).to_contain_text("Action required")
    await expect(taken_card.locator(".health")).to_contain_text("Resync")
    # The status follows the live verdict.
    await expect(taken_card.locator(".status")).to_have_text("Action required")
    await ui.shoot(page, "connections")

    health = await ui.api.get(
        f"/api/v1/connections/{taken['id']}/health", headers=ui.workspace.headers()
    )
    assert health.json()["hint"] in await taken_card.locator(".health").inner_text()


async def test_a_connection_page_shows_health_and_resync_fixes_a_takeover(ui: UiService) -> None:
    bot, connection = await ui.connect(first_name="Taken Bot")
    ui.double.set_webhook_url(bot, TAKEN_OVER)
    page = await ui.signed_in(hash_=f"#/connections/{connection['id']}")
    health = page.locator("#health-result")
    await expect(health).to_contain_text("Action required")
    await expect(health).to_contain_text("Webhook points hereNo")
    await expect(health).to_contain_text("Pending updates0")

    await page.get_by_role("button", name="Resync webhook").click()
    await expect(
        page.get_by_role("status").filter(has_text="Webhook registered again")
    ).to_be_visible()
    assert ui.double.webhook(bot).url.startswith("https://integrations.example.com/")
    await page.get_by_role("button", name="Check health again").click()
    await expect(health).to_contain_text("Healthy")
    await expect(health).to_contain_text("Webhook points hereYes")


async def test_settings_rotation_and_token_replacement_from_the_connection_page(
    ui: UiService,
) -> None:
    bot, connection = await ui.connect()
    secret_before = ui.double.webhook(bot).secret_token
    page = await ui.signed_in(hash_=f"#/connections/{connection['id']}")
    await page.get_by_label("Approval before sending").select_option("none")
    await page.get_by_label("Daily limit (messages a day)").fill("250")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.get_by_role("status").filter(has_text="Settings saved")).to_be_visible()
    await expect(page.locator("section").first).to_contain_text("250 messages")
    saved = await ui.api.get(
        f"/api/v1/connections/{connection['id']}", headers=ui.workspace.headers()
    )
    assert (saved.json()["approval_mode"], saved.json()["daily_limit"]) == ("none", 250)

    await page.get_by_role("button", name="Rotate webhook secret").click()
    await expect(page.get_by_role("status").filter(has_text="Secret rotated")).to_be_visible()
    assert ui.double.webhook(bot).secret_token != secret_before

    new_token = ui.double.rotate_token(bot)
    await page.get_by_label("New bot token").fill(new_token)
    await page.get_by_role("button", name="Replace token").click()
    await expect(page.get_by_role("status").filter(has_text="Token replaced")).to_be_visible()
    assert await page.get_by_label("New bot token").input_value() == ""

    other = ui.double.add_bot()
    assert other.token is not None
    await page.get_by_label("New bot token").fill(other.token)
    await page.get_by_role("button", name="Replace token").click()
    await expect(page.get_by_role("alert")).to_contain_text("different bot")


async def test_disconnect_asks_first_then_shows_the_remote_cleanup(ui: UiService) -> None:
    bot, connection = await ui.connect(first_name="Leaving Bot")
    page = await ui.signed_in(hash_=f"#/connections/{connection['id']}")
    await page.get_by_role("button", name="Disconnect Leaving Bot").click()
    confirm = page.get_by_role("group", name="Disconnect Leaving Bot")
    await expect(confirm).to_contain_text("remove the bot's webhook at Telegram")
    await expect(confirm).to_contain_text("destroy the stored bot token and webhook secrets")
    await expect(confirm).to_contain_text("cancel the messages not sent yet")
    # Nothing happened yet: the confirmation is only a question.
    await confirm.get_by_role("button", name="Keep the connection").click()
    assert ui.double.webhook(bot).url != ""
    await page.get_by_role("button", name="Disconnect Leaving Bot").click()
    await page.get_by_role("button", name="Yes, disconnect").click()

    await page.get_by_role(
        "heading", level=1, name=re.compile("^Leaving Bot .* is disconnected$")
    ).wait_for()
    await expect(page.locator(".remote-cleanup")).to_have_text("Remote cleanup: ok")
    assert ui.double.webhook(bot).url == ""
    gone = await ui.api.get(
        f"/api/v1/connections/{connection['id']}", headers=ui.workspace.headers()
    )
    assert gone.status_code == 404


async def test_disconnect_with_a_revoked_token_shows_the_failed_cleanup_and_its_hint(
    ui: UiService,
) -> None:
    bot, connection = await ui.connect(first_name="Revoked Bot")
    assert bot.token is not None
    ui.double.revoke_token(bot.token)
    page = await ui.signed_in(hash_=f"#/connections/{connection['id']}")
    await page.get_by_role("button", name="Disconnect Revoked Bot").click()
    await page.get_by_role("button", name="Yes, disconnect").click()
    await expect(page.locator(".remote-cleanup")).to_have_text("Remote cleanup: failed")
    await expect(page.locator(".hint")).to_contain_text("deleteWebhook")


async def test_a_sender_sees_no_admin_actions(ui: UiService) -> None:
    _, connection = await ui.connect(first_name="Shared Bot")
    _, sender = await ui.token(Role.sender, "crm")
    page = await ui.signed_in(sender)
    await expect(page.locator(".connection")).to_contain_text("Shared Bot")
    await expect(page.get_by_role("link", name="Add connection")).to_have_count(0)

    await page.get_by_role("link", name="Shared Bot").click()
    await page.get_by_role("heading", level=1, name="Shared Bot").wait_for()
    await expect(page.locator("#health-result")).to_contain_text("Healthy")
    for name in ["Save settings", "Resync webhook", "Rotate webhook secret", "Replace token"]:
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(page.get_by_role("button", name="Disconnect Shared Bot")).to_have_count(0)
    await expect(page.get_by_text("Changing a connection needs an admin API token")).to_be_visible()

    await page.goto(ui.ui_url + "#/connections/new")
    await expect(page.get_by_text("Only an admin API token can add connections")).to_be_visible()
    await expect(page.get_by_label("Bot token")).to_have_count(0)
    # The server refuses all the same.
    refused = await ui.api.post(
        f"/api/v1/connections/{connection['id']}/resync", headers=ui.workspace.headers(sender)
    )
    assert refused.status_code == 403


async def test_telegram_refusing_the_webhook_shows_telegrams_own_reason(ui: UiService) -> None:
    bot = ui.double.add_bot(first_name="Refused Bot")
    assert bot.token is not None
    ui.double.fail_next(
        "setWebhook", status=400, description="Bad Request: bad webhook: Failed to resolve host"
    )
    page = await open_add_connection(ui)
    await page.get_by_label("Bot token").fill(bot.token)
    await page.get_by_role("button", name="Connect bot").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("bad webhook: Failed to resolve host")
    await expect(alert).to_contain_text("What to do:")
    assert await page.get_by_label("Bot token").input_value() == ""


async def test_delivery_errors_show_as_degraded_with_telegrams_last_error(ui: UiService) -> None:
    bot, connection = await ui.connect(first_name="Flaky Bot")
    ui.double.set_webhook_error(bot, "Wrong response from the webhook: 502 Bad Gateway")
    page = await ui.signed_in(hash_=f"#/connections/{connection['id']}")
    health = page.locator("#health-result")
    await expect(health).to_contain_text("Degraded")
    await expect(health).to_contain_text("Wrong response from the webhook: 502 Bad Gateway")
    await expect(health.locator("time")).to_have_count(1)
    # The overview's status follows the verdict.
    await expect(page.locator("section").first).to_contain_text("Degraded")
