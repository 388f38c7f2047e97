"""Approvals and the inbox in the browser, with the worker sending what is approved."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import Dialog, Page, expect

from app.auth.models import Role
from tests.connections.helpers import webhook_credentials
from tests.ingress.test_webhook import post_update
from tests.telegram_double.fixtures import load_update
from tests.telegram_double.state import FakeBot
from tests.waiting import eventually
from tests.web.conftest import UiService

CUSTOMER_CHAT = 218485655
_update_ids = itertools.count(900_000_001)


async def receive(
    ui: UiService, bot: FakeBot, text: str, *, chat_id: int = CUSTOMER_CHAT, name: str = "Waffle"
) -> None:
    """`text` arrives from a customer through the bot's webhook, as Telegram sends it."""
    update: dict[str, Any] = copy.deepcopy(load_update("01_message"))
    for who in (update["message"]["from"], update["message"]["chat"]):
        who.update(id=chat_id, first_name=name, username=f"{name.lower()}_{chat_id}")
    update["update_id"] = next(_update_ids)
    update["message"]["message_id"] = update["update_id"] % 100_000
    update["message"]["text"] = text
    # Each later than the one before: the thread is in the order they were sent.
    update["message"]["date"] = 1_700_000_000 + update["update_id"] % 100_000
    key, secret = webhook_credentials(ui.double, bot)
    response = await post_update(ui.api, key, secret, update)
    assert response.status_code == 200, response.text


async def conversation_of(ui: UiService) -> dict[str, Any]:
    listed = await ui.api.get("/api/v1/conversations", headers=ui.workspace.headers())
    (conversation,) = listed.json()["items"]
    return dict(conversation)


async def message(ui: UiService, message_id: str) -> dict[str, Any]:
    answer = await ui.api.get(f"/api/v1/messages/{message_id}", headers=ui.workspace.headers())
    return dict(answer.json())


def card(page: Page, message_id: str) -> Any:
    return page.locator(f"[data-message-id='{message_id}']")


async def test_approving_one_and_rejecting_another_sends_only_the_approved_one(
    ui: UiService,
) -> None:
    bot, connection = await ui.connect(first_name="Support Bot", username="support_bot")
    await receive(ui, bot, "Where is my order?")
    conversation = await conversation_of(ui)
    _, sender = await ui.token(Role.sender, "crm")
    first = await ui.request_message(
        sender,
        connection["id"],
        conversation_id=conversation["id"],
        text="It ships <b>today</b>.",
        parse_mode="HTML",
    )
    second = await ui.request_message(sender, connection["id"], chat_id=501, text="Wrong text")
    _, reviewer = await ui.token(Role.reviewer, "support lead")

    page = await ui.signed_in(reviewer)
    await page.get_by_role("link", name="Approvals").click()
    await page.get_by_role("heading", level=1, name="Approvals").wait_for()
    cards = page.locator(".approval")
    await expect(cards).to_have_count(2)
    # Oldest first, each with its connection, chat, requester, time and context.
    assert await cards.nth(0).get_attribute("data-message-id") == first["id"]
    one = card(page, first["id"])
    await expect(one).to_contain_text("Support Bot (@support_bot")
    await expect(one).to_contain_text("Asked by")
    await expect(one).to_contain_text("Where is my order?")
    # The text as Telegram will show it: bold, not tags.
    await expect(one.locator(".preview strong")).to_have_text("today")
    await expect(one.locator(".preview")).to_have_text("It ships today.")
    await expect(card(page, second["id"])).to_contain_text("To Chat 501")
    await expect(card(page, second["id"])).to_contain_text("Addressed by chat id")
    await ui.shoot(page, "approvals")

    await one.get_by_role("button", name="Approve").click()
    await expect(one.get_by_role("status")).to_contain_text("Done: this message is approved")
    two = card(page, second["id"])
    await two.get_by_role("button", name="Reject…").click()
    await two.get_by_label("Reason for rejecting").fill("Wrong recipient")
    await two.get_by_role("button", name="Reject with this reason").click()
    await expect(two.get_by_role("status")).to_contain_text("rejected. Reason: Wrong recipient")

    sent = await eventually(lambda: ui.double.sent_messages(bot), "the approved message to be sent")
    assert [(r.chat_id, r.text) for r in sent] == [(CUSTOMER_CHAT, "It ships <b>today</b>.")]
    assert (await message(ui, second["id"]))["status"] == "rejected"
    assert (await message(ui, second["id"]))["review_reason"] == "Wrong recipient"
    await eventually(
        lambda: _status_is(ui, first["id"], "sent"), "the approved message to be recorded sent"
    )
    assert ui.double.sent_messages(bot, chat_id=501) == []


async def _status_is(ui: UiService, message_id: str, status: str) -> bool:
    return (await message(ui, message_id))["status"] == status


async def test_a_message_someone_else_decided_shows_the_decision_instead_of_failing(
    ui: UiService,
) -> None:
    _, connection = await ui.connect()
    _, sender = await ui.token(Role.sender, "crm")
    _, other_reviewer = await ui.token(Role.reviewer, "other reviewer")
    _, reviewer = await ui.token(Role.reviewer, "me")
    rejected = await ui.request_message(sender, connection["id"], chat_id=601, text="first")
    approved = await ui.request_message(sender, connection["id"], chat_id=602, text="second")

    page = await ui.new_page()
    # The page's clock is the test's: the list refreshes when the test says so.
    await page.clock.install(time=datetime.now(UTC))
    await page.goto(ui.ui_url)
    await page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))
    await page.get_by_label("API token").fill(reviewer)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="Approvals").click()
    await expect(page.locator(".approval")).to_have_count(2)

    # Decided elsewhere, then the page refreshes: the card says what happened.
    answer = await ui.api.post(
        f"/api/v1/messages/{rejected['id']}/reject",
        json={"reason": "duplicate"},
        headers=ui.workspace.headers(other_reviewer),
    )
    assert answer.status_code == 200
    await page.clock.run_for(5000)
    await expect(card(page, rejected["id"]).get_by_role("status")).to_contain_text(
        "Decided elsewhere: this message is rejected. Reason: duplicate"
    )

    # Decided elsewhere before the page knew: pressing Approve shows the decision.
    answer = await ui.api.post(
        f"/api/v1/messages/{approved['id']}/approve", headers=ui.workspace.headers(other_reviewer)
    )
    assert answer.status_code == 200
    await card(page, approved["id"]).get_by_role("button", name="Approve").click()
    outcome = card(page, approved["id"]).get_by_role("status")
    await expect(outcome).to_contain_text("Someone else decided first: this message is")
    await expect(page.get_by_role("alert")).to_have_count(0)
    await expect(page.get_by_text("Nothing is waiting for approval.")).to_be_visible()


async def test_the_requester_cannot_approve_their_own_message(ui: UiService) -> None:
    _, connection = await ui.connect()
    mine = await ui.request_message(ui.workspace.admin_token, connection["id"], chat_id=7, text="x")
    page = await ui.signed_in(hash_="#/approvals")
    own = card(page, mine["id"])
    await expect(own).to_contain_text("another reviewer has to decide it")
    await expect(own).to_contain_text("Asked byyou (initial admin)")
    await expect(own.get_by_role("button", name="Approve")).to_have_count(0)


async def test_a_sender_sees_the_queue_without_approve_buttons(ui: UiService) -> None:
    _, connection = await ui.connect()
    _, sender = await ui.token(Role.sender, "crm")
    pending = await ui.request_message(sender, connection["id"], chat_id=8, text="wait for me")
    page = await ui.signed_in(sender, hash_="#/approvals")
    await expect(card(page, pending["id"])).to_contain_text("wait for me")
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    await expect(page.get_by_role("button", name="Reject…")).to_have_count(0)
    refused = await ui.api.post(
        f"/api/v1/messages/{pending['id']}/approve", headers=ui.workspace.headers(sender)
    )
    assert refused.status_code == 403


async def test_the_inbox_shows_inbound_text_as_text_and_sends_through_the_approval_queue(
    ui: UiService,
) -> None:
    bot, _ = await ui.connect(first_name="Support Bot")
    await receive(ui, bot, "<script>alert(1)</script>")
    await receive(ui, bot, "<img src=x onerror=alert(2)> & hello")
    conversation = await conversation_of(ui)
    sender_id, sender = await ui.token(Role.sender, "crm")
    page = await ui.signed_in(sender)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)

    page.on("dialog", on_dialog)
    await page.get_by_role("link", name="Inbox").click()
    await page.get_by_role("link", name="Waffle").click()
    thread = page.get_by_role("list", name="Messages")
    texts = thread.locator(".message-text")
    await expect(texts).to_have_text(
        ["<script>alert(1)</script>", "<img src=x onerror=alert(2)> & hello"]
    )
    await expect(page.locator("main script, main img")).to_have_count(0)
    await expect(thread.locator("li").first).to_contain_text("Received")

    await page.get_by_role("textbox", name="Message").fill("Thanks, we are on it.")
    await page.get_by_role("button", name="Send for approval").click()
    await expect(page.get_by_role("status")).to_contain_text("Message waiting for approval.")
    await expect(thread.locator("li").last).to_contain_text("Sent (waiting for approval)")
    await expect(texts.last).to_have_text("Thanks, we are on it.")
    await ui.shoot(page, "inbox")
    assert dialogs == []

    listed = await ui.api.get(
        "/api/v1/messages",
        params={"conversation_id": conversation["id"]},
        headers=ui.workspace.headers(),
    )
    (queued,) = listed.json()["items"]
    assert (queued["status"], queued["requested_by"], queued["text"]) == (
        "pending_approval",
        sender_id,
        "Thanks, we are on it.",
    )
    assert ui.double.sent_messages(bot) == []


async def test_a_reviewer_reads_the_inbox_without_a_send_form(ui: UiService) -> None:
    bot, _ = await ui.connect()
    await receive(ui, bot, "hello there")
    conversation = await conversation_of(ui)
    _, reviewer = await ui.token(Role.reviewer, "lead")
    page = await ui.signed_in(reviewer, hash_=f"#/inbox/{conversation['id']}")
    await expect(page.locator(".message-text")).to_have_text(["hello there"])
    await expect(page.get_by_role("textbox")).to_have_count(0)
    await expect(page.get_by_text("sending needs a sender or admin API token")).to_be_visible()


async def test_the_inbox_shows_a_new_conversation_without_a_reload(ui: UiService) -> None:
    bot, _ = await ui.connect()
    await receive(ui, bot, "first customer")
    page = await ui.new_page()
    await page.clock.install(time=datetime.now(UTC))
    await page.goto(ui.ui_url)
    await page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))
    await page.get_by_label("API token").fill(ui.workspace.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="Inbox").click()
    conversations = page.get_by_role("list", name="Conversations").get_by_role("link")
    await expect(conversations).to_have_count(1)
    await conversations.first.focus()

    await receive(ui, bot, "second customer", chat_id=777001, name="Marta")
    await page.clock.run_for(5000)
    await expect(conversations).to_have_count(2)
    await expect(conversations.first).to_contain_text("Marta")
    # The redraw kept the keyboard user's place on the link they were on.
    focused = await page.evaluate("document.activeElement.textContent")
    assert focused.startswith("Waffle")
