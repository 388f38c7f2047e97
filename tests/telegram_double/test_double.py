"""The Bot API double must behave like FACTS.md says, or tests built on it prove nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.logging_state import LoggingState
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import all_updates, load_update, telegram_double
from tests.telegram_double.state import DoubleUsageError, FakeBot, ManualClock, SendLimits
from tests.telegram_double.validation import load_spec
from tests.waiting import eventually

__all__ = ["telegram_double"]

REPO = Path(__file__).resolve().parents[2]
WEBHOOK = "https://hooks.example.com/telegram/webhook/abc?conn=7"
HTTPS_ERROR = "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
PORT_ERROR = "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
INVALID_URL = "Bad Request: invalid webhook URL specified"
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def bot(telegram_double: TelegramDouble) -> FakeBot:
    return telegram_double.add_bot(username="acme_support_bot", first_name="Acme")


class Api:
    """Raw HTTP calls to the double, checking the envelope on every answer."""

    def __init__(self, http: httpx.AsyncClient, double: TelegramDouble) -> None:
        self.http = http
        self.double = double

    async def raw(
        self, token: str, method: str, *, verb: str = "POST", **kwargs: Any
    ) -> httpx.Response:
        url = f"{self.double.base_url}/bot{token}/{method}"
        response = await self.http.request(verb, url, **kwargs)
        body = response.json()
        assert isinstance(body, dict)
        if body["ok"]:
            assert response.status_code == 200
        else:
            # FACTS: the HTTP status equals error_code.
            assert response.status_code == body["error_code"]
        return response

    async def ok(self, token: str, method: str, **params: Any) -> Any:
        body = (await self.raw(token, method, json=params)).json()
        assert body["ok"] is True, body
        return body

    async def fail(self, token: str, method: str, **params: Any) -> tuple[int, str]:
        body = (await self.raw(token, method, json=params)).json()
        assert body["ok"] is False, body
        return body["error_code"], body["description"]


@pytest.fixture
def api(http: httpx.AsyncClient, telegram_double: TelegramDouble) -> Api:
    return Api(http, telegram_double)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def tok(bot: FakeBot) -> str:
    assert bot.token is not None
    return bot.token


# -- tokens, methods, encodings ------------------------------------------------


async def test_get_me_returns_the_registered_user(api: Api, bot: FakeBot) -> None:
    result = (await api.ok(tok(bot), "getMe"))["result"]
    assert result["id"] == bot.bot_id
    assert result["username"] == "acme_support_bot"
    assert result["first_name"] == "Acme"
    assert result["is_bot"] is True
    assert load_spec().object_problems("User", result) == []


async def test_generated_tokens_are_well_formed_and_distinct(
    telegram_double: TelegramDouble,
) -> None:
    tokens = [tok(telegram_double.add_bot()) for _ in range(3)]
    assert len(set(tokens)) == 3
    for token in tokens:
        head, _, tail = token.partition(":")
        assert head.isdigit()
        assert len(tail) == 35


@pytest.mark.parametrize("name", ["getMe", "getme", "GETME", "GetMe"])
async def test_method_names_are_case_insensitive(api: Api, bot: FakeBot, name: str) -> None:
    assert (await api.ok(tok(bot), name))["result"]["id"] == bot.bot_id
    assert api.double.calls[-1].method == "getMe"


async def test_unknown_token_is_401_unauthorized(api: Api, bot: FakeBot) -> None:
    other = "123456789:AAxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    assert await api.fail(other, "getMe") == (401, "Unauthorized")


@pytest.mark.parametrize("token", ["not-a-token", "12345", "0123:abc", "abc:def"])
async def test_malformed_token_is_401_invalid_token(api: Api, token: str) -> None:
    assert await api.fail(token, "getMe") == (401, "Unauthorized: invalid token specified")


async def test_percent_encoded_slash_stays_in_the_token(api: Api, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{api.double.base_url}/bot12345%2F..%2Fx/getMe")
    assert response.status_code == 401
    assert response.json()["description"] == "Unauthorized: invalid token specified"


async def test_path_outside_bot_api_is_404(api: Api, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{api.double.base_url}/favicon.ico")
    assert response.status_code == 404
    assert response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


async def test_unknown_method_is_404_and_a_violation(api: Api, bot: FakeBot) -> None:
    assert await api.fail(tok(bot), "getMee") == (404, "Not Found")
    violations = api.double.take_violations()
    assert [(v.method, v.description) for v in violations] == [("getMee", "unknown method")]


async def test_revoked_token_is_401(api: Api, telegram_double: TelegramDouble) -> None:
    bot = telegram_double.add_bot()
    token = tok(bot)
    await api.ok(token, "getMe")
    telegram_double.revoke_token(token)
    assert await api.fail(token, "getMe") == (401, "Unauthorized")


async def test_rotated_token_replaces_the_old_one(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    old = tok(bot)
    new = telegram_double.rotate_token(bot)
    assert new != old
    assert new.startswith(f"{bot.bot_id}:")
    assert await api.fail(old, "getMe") == (401, "Unauthorized")
    assert (await api.ok(new, "getMe"))["result"]["id"] == bot.bot_id


async def test_params_from_query_string_with_get(api: Api, bot: FakeBot) -> None:
    response = await api.raw(
        tok(bot), "sendMessage", verb="GET", params={"chat_id": "42", "text": "via query"}
    )
    assert response.json()["result"]["text"] == "via query"
    call = api.double.calls[-1]
    assert (call.encoding, call.http_method) == ("query", "GET")
    # Strings from the wire are coerced to the declared types.
    assert call.params["chat_id"] == 42


async def test_params_from_urlencoded_form_with_json_serialized_fields(
    api: Api, bot: FakeBot
) -> None:
    response = await api.raw(
        tok(bot),
        "sendMessage",
        data={
            "chat_id": "42",
            "text": "via form",
            "disable_notification": "true",
            "reply_parameters": json.dumps({"message_id": 7}),
        },
    )
    assert response.json()["result"]["text"] == "via form"
    call = api.double.calls[-1]
    assert call.encoding == "form"
    assert call.params["disable_notification"] is True
    assert call.params["reply_parameters"] == {"message_id": 7}


async def test_params_from_multipart(api: Api, bot: FakeBot) -> None:
    response = await api.raw(
        tok(bot),
        "setWebhook",
        files={
            "url": (None, WEBHOOK),
            "max_connections": (None, "5"),
            "certificate": ("cert.pem", b"-----BEGIN CERTIFICATE-----", "application/x-pem"),
        },
    )
    assert response.json()["description"] == "Webhook was set"
    assert api.double.calls[-1].encoding == "multipart"
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info["max_connections"] == 5
    assert info["has_custom_certificate"] is True


async def test_query_and_json_body_merge(api: Api, bot: FakeBot) -> None:
    response = await api.raw(
        tok(bot), "sendMessage", params={"chat_id": "42"}, json={"text": "merged"}
    )
    assert response.json()["result"]["chat"]["id"] == 42
    assert api.double.calls[-1].encoding == "json"


async def test_unparsable_json_body_is_400_and_a_violation(api: Api, bot: FakeBot) -> None:
    response = await api.raw(
        tok(bot),
        "sendMessage",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.json()["description"] == "Bad Request: can't parse JSON object"
    assert len(api.double.take_violations()) == 1


# -- strict validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "description"),
    [
        (
            "sendMessage",
            {"chat_id": 1, "text": "x", "parse_mod": "HTML"},
            'Bad Request: unknown parameter "parse_mod" for method sendMessage',
        ),
        (
            "sendMessage",
            {"chat_id": 1, "text": "x", "reply_to_message_id": 3},
            'Bad Request: unknown parameter "reply_to_message_id" for method sendMessage',
        ),
        ("sendMessage", {"chat_id": 1}, 'Bad Request: parameter "text" is required'),
        ("setWebhook", {}, 'Bad Request: parameter "url" is required'),
        (
            "setWebhook",
            {"url": WEBHOOK, "max_connections": "many"},
            'Bad Request: parameter "max_connections" must be of type Integer',
        ),
        (
            "sendMessage",
            {"chat_id": 1, "text": "x", "disable_notification": "sure"},
            'Bad Request: parameter "disable_notification" must be of type Boolean',
        ),
        (
            "sendMessage",
            {"chat_id": [1], "text": "x"},
            'Bad Request: parameter "chat_id" must be of type Integer or String',
        ),
        (
            "sendMessage",
            {"chat_id": 1, "text": "x", "reply_parameters": {"messageid": 3}},
            'Bad Request: unknown field "reply_parameters.messageid" in ReplyParameters',
        ),
        (
            "sendMessage",
            {"chat_id": 1, "text": "x", "reply_parameters": {}},
            'Bad Request: field "reply_parameters.message_id" is required',
        ),
        (
            "getUpdates",
            {"allowed_updates": "message"},
            'Bad Request: can\'t parse "allowed_updates" JSON object',
        ),
        (
            "setWebhook",
            {"url": WEBHOOK, "allowed_updates": ["mesage"]},
            "Bad Request: unknown update type(s) in allowed_updates: ['mesage']",
        ),
    ],
)
async def test_invalid_calls_are_400_and_recorded(
    api: Api, bot: FakeBot, method: str, params: dict[str, Any], description: str
) -> None:
    assert await api.fail(tok(bot), method, **params) == (400, description)
    violations = api.double.take_violations()
    assert [(v.method, v.description) for v in violations] == [(method, description)]


async def test_valid_nested_objects_pass(api: Api, bot: FakeBot) -> None:
    await api.ok(
        tok(bot),
        "sendMessage",
        chat_id=1,
        text="pick one",
        reply_parameters={"message_id": 3, "allow_sending_without_reply": True},
        reply_markup={"inline_keyboard": [[{"text": "Yes", "callback_data": "y"}]]},
    )
    assert api.double.violations == []


async def test_method_the_double_does_not_simulate_is_a_violation(api: Api, bot: FakeBot) -> None:
    status, description = await api.fail(tok(bot), "sendChatAction", chat_id=1, action="typing")
    assert status == 500
    assert "not simulated" in description
    assert len(api.double.take_violations()) == 1


def test_fixture_fails_a_test_that_left_a_violation(tmp_path: Path) -> None:
    test_file = tmp_path / "test_leftover.py"
    test_file.write_text(
        "import httpx\n"
        "from tests.telegram_double.fixtures import telegram_double\n"
        "def test_typo(telegram_double):\n"
        "    bot = telegram_double.add_bot()\n"
        "    url = f'{telegram_double.base_url}/bot{bot.token}/sendMessage'\n"
        "    httpx.post(url, json={'chat_id': 1, 'text': 'x', 'parse_mod': 'HTML'})\n"
        "def test_clean(telegram_double):\n"
        "    bot = telegram_double.add_bot()\n"
        "    httpx.post(f'{telegram_double.base_url}/bot{bot.token}/getMe')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 passed, 1 error" in result.stdout
    assert 'unknown parameter "parse_mod"' in result.stdout
    assert "ERROR at teardown of test_typo" in result.stdout


# -- setWebhook ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "description"),
    [
        ("http://hooks.example.com/tg", HTTPS_ERROR),
        ("hooks.example.com/tg", HTTPS_ERROR),
        ("https://hooks.example.com:8080/tg", PORT_ERROR),
        ("https://hooks.example.com:444/tg", PORT_ERROR),
        ("https://hooks.example.com:99999/tg", INVALID_URL),
        ("https:///no-host", INVALID_URL),
        ("ftp://hooks.example.com/tg", INVALID_URL),
        ("https://hooks example.com/tg", INVALID_URL),
    ],
)
async def test_set_webhook_rejects_bad_urls(
    api: Api, bot: FakeBot, url: str, description: str
) -> None:
    assert await api.fail(tok(bot), "setWebhook", url=url) == (400, description)
    assert api.double.webhook(bot).url == ""


@pytest.mark.parametrize("port", [80, 88, 443, 8443])
async def test_set_webhook_accepts_the_four_ports(api: Api, bot: FakeBot, port: int) -> None:
    url = f"https://hooks.example.com:{port}/tg"
    assert (await api.ok(tok(bot), "setWebhook", url=url))["description"] == "Webhook was set"
    assert api.double.webhook(bot).url == url


@pytest.mark.parametrize(
    ("secret", "description"),
    [
        ("a" * 257, "Bad Request: secret token is too long"),
        ("has space", "Bad Request: secret token contains unallowed characters"),
        ("semi;colon", "Bad Request: secret token contains unallowed characters"),
        ("ümlaut", "Bad Request: secret token contains unallowed characters"),
    ],
)
async def test_set_webhook_rejects_bad_secrets(
    api: Api, bot: FakeBot, secret: str, description: str
) -> None:
    assert await api.fail(tok(bot), "setWebhook", url=WEBHOOK, secret_token=secret) == (
        400,
        description,
    )


async def test_set_webhook_accepts_a_256_char_secret(api: Api, bot: FakeBot) -> None:
    secret = "Az09_-" * 42 + "abcd"
    assert len(secret) == 256
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token=secret)
    assert api.double.webhook(bot).secret_token == secret


@pytest.mark.parametrize(("given", "stored"), [(None, 40), (0, 1), (-5, 1), (7, 7), (1000, 100)])
async def test_max_connections_is_clamped_not_refused(
    api: Api, bot: FakeBot, given: int | None, stored: int
) -> None:
    params: dict[str, Any] = {"url": WEBHOOK}
    if given is not None:
        params["max_connections"] = given
    await api.ok(tok(bot), "setWebhook", **params)
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info["max_connections"] == stored


async def test_set_webhook_is_limited_to_once_a_second(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    clock = ManualClock()
    telegram_double.clock = clock
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    response = await api.raw(tok(bot), "setWebhook", json={"url": WEBHOOK + "&v=2"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    # Removing the webhook is not limited.
    await api.ok(tok(bot), "setWebhook", url="")
    clock.advance(1.0)
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK + "&v=2")
    assert telegram_double.webhook(bot).url == WEBHOOK + "&v=2"


async def test_set_webhook_limit_is_per_bot(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.clock = ManualClock()
    other = telegram_double.add_bot()
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    await api.ok(tok(other), "setWebhook", url=WEBHOOK)
    assert (await api.fail(tok(bot), "setWebhook", url=WEBHOOK))[0] == 429


async def test_set_webhook_limit_can_be_switched_off(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.clock = ManualClock()
    telegram_double.enforce_set_webhook_rate_limit = False
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    body = await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s2")
    assert body["description"] == "Webhook was set"


async def test_set_webhook_twice_with_same_settings_is_already_set(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    first = await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s1")
    again = await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s1")
    changed = await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s2")
    assert first == {"ok": True, "result": True, "description": "Webhook was set"}
    assert again["description"] == "Webhook is already set"
    assert changed["description"] == "Webhook was set"


async def test_allowed_updates_omitted_keeps_previous_and_empty_means_default(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    wanted = ["message", "message_reaction"]
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, allowed_updates=wanted)
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s")
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info["allowed_updates"] == wanted
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, allowed_updates=[])
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert "allowed_updates" not in info
    # The default set excludes message_reaction again.
    with pytest.raises(DoubleUsageError):
        telegram_double.queue_update(bot, load_update("10_message_reaction"))


async def test_set_webhook_with_empty_url_removes_it(api: Api, bot: FakeBot) -> None:
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    assert (await api.ok(tok(bot), "setWebhook", url=""))["description"] == "Webhook was deleted"
    assert (await api.ok(tok(bot), "getWebhookInfo"))["result"]["url"] == ""


async def test_drop_pending_updates_on_set_webhook(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.queue_update(bot, load_update("01_message"))
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, drop_pending_updates=True)
    assert telegram_double.webhook(bot).pending_update_count == 0


# -- deleteWebhook / getWebhookInfo --------------------------------------------


async def test_delete_webhook_descriptions(api: Api, bot: FakeBot) -> None:
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    first = await api.ok(tok(bot), "deleteWebhook")
    again = await api.ok(tok(bot), "deleteWebhook")
    assert first == {"ok": True, "result": True, "description": "Webhook was deleted"}
    assert again["description"] == "Webhook is already deleted"


async def test_delete_webhook_drop_pending_updates(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.queue_update(bot, load_update("01_message"))
    await api.ok(tok(bot), "deleteWebhook")
    assert telegram_double.webhook(bot).pending_update_count == 1
    await api.ok(tok(bot), "deleteWebhook", drop_pending_updates=True)
    assert telegram_double.webhook(bot).pending_update_count == 0


async def test_webhook_info_without_webhook_has_only_required_fields(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.queue_update(bot, load_update("01_message"))
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info == {"url": "", "has_custom_certificate": False, "pending_update_count": 1}


async def test_webhook_info_optional_fields_appear_when_they_apply(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    await api.ok(
        tok(bot),
        "setWebhook",
        url=WEBHOOK,
        ip_address="203.0.113.9",
        max_connections=10,
        allowed_updates=["message"],
    )
    telegram_double.set_webhook_error(
        bot, "Wrong response from the webhook: 502 Bad Gateway", 1_750_000_123
    )
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info == {
        "url": WEBHOOK,
        "has_custom_certificate": False,
        "pending_update_count": 0,
        "max_connections": 10,
        "ip_address": "203.0.113.9",
        "last_error_date": 1_750_000_123,
        "last_error_message": "Wrong response from the webhook: 502 Bad Gateway",
        "allowed_updates": ["message"],
    }
    assert load_spec().object_problems("WebhookInfo", info) == []


async def test_set_webhook_url_simulates_another_app_taking_over(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="ours")
    telegram_double.set_webhook_url(bot, "https://other.example.net/hook")
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info["url"] == "https://other.example.net/hook"
    assert telegram_double.webhook(bot).secret_token is None


# -- getUpdates ----------------------------------------------------------------


async def test_get_updates_is_409_while_a_webhook_is_set(api: Api, bot: FakeBot) -> None:
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    assert await api.fail(tok(bot), "getUpdates") == (409, CONFLICT_WEBHOOK)


async def test_get_updates_offset_confirms_earlier_updates(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    ids = [telegram_double.queue_update(bot, {"message": {"n": n}}) for n in range(3)]
    everything = (await api.ok(tok(bot), "getUpdates"))["result"]
    assert [u["update_id"] for u in everything] == ids
    # Without an offset nothing is confirmed.
    assert telegram_double.webhook(bot).pending_update_count == 3
    rest = (await api.ok(tok(bot), "getUpdates", offset=ids[1]))["result"]
    assert [u["update_id"] for u in rest] == ids[1:]
    assert telegram_double.webhook(bot).pending_update_count == 2
    assert (await api.ok(tok(bot), "getUpdates", offset=ids[2] + 1))["result"] == []
    assert telegram_double.webhook(bot).pending_update_count == 0


async def test_get_updates_limit_and_negative_offset(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    ids = [telegram_double.queue_update(bot, {"message": {"n": n}}) for n in range(5)]
    limited = (await api.ok(tok(bot), "getUpdates", limit=2))["result"]
    assert [u["update_id"] for u in limited] == ids[:2]
    last_two = (await api.ok(tok(bot), "getUpdates", offset=-2))["result"]
    assert [u["update_id"] for u in last_two] == ids[3:]
    assert telegram_double.webhook(bot).pending_update_count == 2


async def test_get_updates_returns_sample_updates_unchanged(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    samples = all_updates()
    assert len(samples) == 45
    for _, update in samples:
        telegram_double.queue_update(bot, update, ignore_allowed_updates=True)
    result = (await api.ok(tok(bot), "getUpdates"))["result"]
    assert result == [update for _, update in samples]


async def test_long_poll_returns_as_soon_as_an_update_arrives(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.long_poll_cap = 5.0

    async def queue_once_polling() -> None:
        await eventually(lambda: telegram_double.polls_started(bot) == 1, "the poll to wait")
        telegram_double.queue_update(bot, load_update("01_message"))

    poll, _ = await asyncio.gather(api.ok(tok(bot), "getUpdates", timeout=5), queue_once_polling())
    # The poll began before the update existed and still returned it.
    assert [u["update_id"] for u in poll["result"]] == [892252934]


async def test_long_poll_times_out_empty(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.long_poll_cap = 0.3
    started = time.monotonic()
    assert (await api.ok(tok(bot), "getUpdates", timeout=30))["result"] == []
    assert 0.25 < time.monotonic() - started < 2.0


async def test_second_poller_terminates_the_first(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.long_poll_cap = 1.0
    first = asyncio.create_task(api.raw(tok(bot), "getUpdates", json={"timeout": 1}))
    await eventually(lambda: telegram_double.polls_started(bot) == 1, "the first poll to wait")
    second = await api.ok(tok(bot), "getUpdates", timeout=0)
    assert second["result"] == []
    body = (await first).json()
    assert body["error_code"] == 409
    assert body["description"] == (
        "Conflict: terminated by other getUpdates request; "
        "make sure that only one bot instance is running"
    )


# -- sendMessage ---------------------------------------------------------------


async def test_send_message_returns_a_valid_message_with_per_chat_ids(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    first = (await api.ok(tok(bot), "sendMessage", chat_id=10, text="one"))["result"]
    second = (await api.ok(tok(bot), "sendMessage", chat_id=10, text="two"))["result"]
    other = (await api.ok(tok(bot), "sendMessage", chat_id=-100123, text="three"))["result"]
    assert (first["message_id"], second["message_id"], other["message_id"]) == (1, 2, 1)
    assert first["from"]["id"] == bot.bot_id
    assert first["chat"] == {"id": 10, "type": "private", "first_name": "Test user"}
    assert other["chat"]["type"] == "supergroup"
    assert load_spec().object_problems("Message", first) == []
    sent = telegram_double.sent_messages(bot)
    assert [(m.chat_id, m.message_id, m.text) for m in sent] == [
        (10, 1, "one"),
        (10, 2, "two"),
        (-100123, 1, "three"),
    ]
    assert [m.text for m in telegram_double.sent_messages(bot, chat_id=10)] == ["one", "two"]


async def test_send_limits_when_set_refuse_what_telegram_would_and_deliver_nothing(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    clock = ManualClock()
    telegram_double.clock = clock
    # Off by default: a chat takes any number of messages at once.
    await api.ok(tok(bot), "sendMessage", chat_id=10, text="free")
    await api.ok(tok(bot), "sendMessage", chat_id=10, text="free")
    telegram_double.send_limits = SendLimits(bot_sends=3, group_sends=2, group_window=10.0)
    clock.advance(5.0)
    await api.ok(tok(bot), "sendMessage", chat_id=10, text="a")
    # A chat: one a second.
    assert await api.fail(tok(bot), "sendMessage", chat_id=10, text="b") == (
        429,
        "Too Many Requests: retry after 1",
    )
    # A bot: three in any second, across chats.
    await api.ok(tok(bot), "sendMessage", chat_id=11, text="c")
    await api.ok(tok(bot), "sendMessage", chat_id=-100123, text="d")
    code, _ = await api.fail(tok(bot), "sendMessage", chat_id=12, text="e")
    assert code == 429
    clock.advance(3.0)
    # A group: two in any ten seconds.
    await api.ok(tok(bot), "sendMessage", chat_id=-100123, text="f")
    clock.advance(3.0)
    code, description = await api.fail(tok(bot), "sendMessage", chat_id=-100123, text="g")
    assert (code, description) == (429, "Too Many Requests: retry after 4")
    refused = {"b", "e", "g"}
    assert not refused & {m.text for m in telegram_double.sent_messages(bot)}
    assert [c.status for c in telegram_double.calls_for("sendMessage")].count(429) == 3


async def test_send_message_to_channel_username(api: Api, bot: FakeBot) -> None:
    result = (await api.ok(tok(bot), "sendMessage", chat_id="@acme_news", text="hi"))["result"]
    assert result["chat"]["type"] == "channel"
    assert result["chat"]["username"] == "acme_news"
    assert result["chat"]["id"] < 0


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("", "Bad Request: message text is empty"),
        ("   \n", "Bad Request: message text is empty"),
        ("x" * 4097, "Bad Request: message is too long"),
    ],
)
async def test_send_message_text_limits(
    api: Api, bot: FakeBot, text: str, description: str
) -> None:
    assert await api.fail(tok(bot), "sendMessage", chat_id=1, text=text) == (400, description)
    assert api.double.sent_messages(bot) == []


async def test_send_message_accepts_4096_characters(api: Api, bot: FakeBot) -> None:
    result = (await api.ok(tok(bot), "sendMessage", chat_id=1, text="é" * 4096))["result"]
    assert len(result["text"]) == 4096


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("not_found", (400, "Bad Request: chat not found")),
        ("blocked", (403, "Forbidden: bot was blocked by the user")),
        ("kicked", (403, "Forbidden: bot was kicked from the group chat")),
    ],
)
async def test_scripted_chat_states(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    status: Any,
    expected: tuple[int, str],
) -> None:
    telegram_double.set_chat(bot, 55, status)
    assert await api.fail(tok(bot), "sendMessage", chat_id=55, text="hi") == expected
    # Other chats are unaffected.
    await api.ok(tok(bot), "sendMessage", chat_id=56, text="hi")


async def test_migrated_chat_carries_migrate_to_chat_id(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.set_chat(bot, -4242, "migrated", migrate_to_chat_id=-1004242)
    body = (await api.raw(tok(bot), "sendMessage", json={"chat_id": -4242, "text": "x"})).json()
    assert body == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": -1004242},
    }


async def test_non_username_string_chat_is_not_found(api: Api, bot: FakeBot) -> None:
    assert await api.fail(tok(bot), "sendMessage", chat_id="acme", text="x") == (
        400,
        "Bad Request: chat not found",
    )


# -- scripted failures and delays ----------------------------------------------


async def test_fail_next_429_sets_header_and_counts_down(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.fail_next("sendmessage", status=429, retry_after=7, times=2)
    for _ in range(2):
        response = await api.raw(tok(bot), "sendMessage", json={"chat_id": 1, "text": "x"})
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.json()["description"] == "Too Many Requests: retry after 7"
        assert response.json()["parameters"] == {"retry_after": 7}
    await api.ok(tok(bot), "sendMessage", chat_id=1, text="x")
    assert [c.status for c in telegram_double.calls_for("sendMessage")] == [429, 429, 200]


async def test_fail_next_only_hits_the_named_bot(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    other = telegram_double.add_bot()
    telegram_double.fail_next("getMe", status=401, bot=bot)
    await api.ok(tok(other), "getMe")
    assert await api.fail(tok(bot), "getMe") == (401, "Unauthorized")


async def test_delay_next_holds_the_answer(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.delay_next("getMe", 0.3)
    started = time.monotonic()
    await api.ok(tok(bot), "getMe")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await api.ok(tok(bot), "getMe")
    assert time.monotonic() - started < 0.3


async def test_reset_releases_a_hung_request(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.hang_next("getMe")
    hung = asyncio.create_task(api.raw(tok(bot), "getMe"))
    await eventually(lambda: telegram_double.calls_for("getMe", bot=bot), "the call to arrive")
    assert not hung.done()
    telegram_double.reset()
    response = await asyncio.wait_for(hung, 2)
    assert response.status_code == 401


# -- webhook delivery ----------------------------------------------------------


class Receiver:
    """A stand-in for the service's webhook endpoint."""

    def __init__(self) -> None:
        self.status = 200
        self.reply: dict[str, Any] | None = None
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    def app(self) -> Starlette:
        async def endpoint(request: Request) -> Response:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            self.requests.append((target, dict(request.headers), await request.body()))
            if self.reply is not None:
                return JSONResponse(self.reply, self.status)
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST"])])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, httpx.AsyncClient]]:
    target = Receiver()
    transport = httpx.ASGITransport(app=target.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://service.local") as client:
        yield target, client


async def test_deliver_posts_json_with_secret_header(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    target, client = receiver
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s3cr3t")
    update = load_update("01_message")
    assert await telegram_double.deliver(bot, update, client=client) == 200
    [(path, headers, body)] = target.requests
    assert path == "/telegram/webhook/abc?conn=7"
    assert headers["content-type"] == "application/json"
    assert headers["x-telegram-bot-api-secret-token"] == "s3cr3t"
    assert json.loads(body) == update
    assert telegram_double.webhook(bot).pending_update_count == 0


async def test_deliver_without_secret_sends_no_header(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    target, client = receiver
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    await telegram_double.deliver(bot, load_update("01_message"), client=client)
    [(_, headers, _)] = target.requests
    assert "x-telegram-bot-api-secret-token" not in headers


async def test_failed_delivery_stays_pending_until_redelivered(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    target, client = receiver
    telegram_double.clock = ManualClock(unix=1_750_000_500)
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, secret_token="s")
    target.status = 401
    first = await telegram_double.deliver(bot, load_update("01_message"), client=client)
    second = await telegram_double.deliver(bot, load_update("02_message"), client=client)
    assert (first, second) == (401, 401)
    info = (await api.ok(tok(bot), "getWebhookInfo"))["result"]
    assert info["pending_update_count"] == 2
    assert info["last_error_message"] == "Wrong response from the webhook: 401 Unauthorized"
    assert info["last_error_date"] == 1_750_000_500

    target.status = 204
    assert await telegram_double.redeliver_pending(bot, client=client) == [204, 204]
    sent_ids = [json.loads(body)["update_id"] for _, _, body in target.requests]
    assert sent_ids[-2:] == [892252934, sent_ids[1]]
    assert telegram_double.webhook(bot).pending_update_count == 0


async def test_redirect_is_not_followed_and_counts_as_failure(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    target, client = receiver
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    target.status = 302
    assert await telegram_double.deliver(bot, load_update("01_message"), client=client) == 302
    assert len(target.requests) == 1
    assert telegram_double.webhook(bot).last_error_message == (
        "Wrong response from the webhook: 302 Found"
    )


async def test_unreachable_webhook_records_connection_error(
    api: Api, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{closed_port()}") as client:
        status = await telegram_double.deliver(bot, load_update("01_message"), client=client)
    assert status == 0
    assert telegram_double.webhook(bot).last_error_message == "Connection refused"
    assert telegram_double.webhook(bot).pending_update_count == 1


async def test_webhook_reply_method_is_executed(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    target, client = receiver
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK)
    target.reply = {"method": "sendMessage", "chat_id": 218485655, "text": "pong"}
    await telegram_double.deliver(bot, load_update("01_message"), client=client)
    [sent] = telegram_double.sent_messages(bot)
    assert (sent.chat_id, sent.text) == (218485655, "pong")
    assert telegram_double.calls_for("sendMessage")[0].encoding == "webhook-reply"


async def test_deliver_needs_a_webhook_and_queue_feeds_get_updates(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    _, client = receiver
    with pytest.raises(DoubleUsageError):
        await telegram_double.deliver(bot, load_update("01_message"), client=client)
    telegram_double.queue_update(bot, load_update("02_message"))
    result = (await api.ok(tok(bot), "getUpdates"))["result"]
    assert result == [load_update("02_message")]


async def test_updates_outside_allowed_updates_are_not_created(
    api: Api,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    target, client = receiver
    await api.ok(tok(bot), "setWebhook", url=WEBHOOK, allowed_updates=["my_chat_member"])
    with pytest.raises(DoubleUsageError, match="message"):
        await telegram_double.deliver(bot, load_update("01_message"), client=client)
    assert target.requests == []
    update = load_update("08_my_chat_member")
    assert await telegram_double.deliver(bot, update, client=client) == 200


def test_the_standalone_double_prints_a_bot_and_queues_messages_for_it() -> None:
    """`python -m tests.telegram_double`, as the README's walkthrough uses it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.telegram_double"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        base_url, token = started["base_url"], started["token"]
        me = httpx.get(f"{base_url}/bot{token}/getMe", timeout=10).json()
        assert me["ok"] and me["result"]["id"] == started["bot_id"]
        queued = httpx.post(
            f"{base_url}/_double/bots/{started['bot_id']}/messages",
            json={"chat_id": 501, "text": "hi"},
            timeout=10,
        )
        assert queued.status_code == 201
        updates = httpx.post(f"{base_url}/bot{token}/getUpdates", timeout=10).json()["result"]
        assert [u["message"]["text"] for u in updates] == ["hi"]
        assert updates[0]["update_id"] == queued.json()["update_id"]
        refused = httpx.post(f"{base_url}/_double/bots/1/messages", json={"chat_id": 1}, timeout=10)
        assert refused.status_code == 400
    finally:
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_double_leaves_the_logging_configuration_as_it_found_it() -> None:
    before = LoggingState.capture()
    with TelegramDouble() as double:
        response = httpx.post(f"{double.base_url}/bot123456789:{'A' * 35}/getMe", timeout=5)
    assert response.status_code == 401
    assert before.differences(LoggingState.capture()) == []


async def test_requests_to_the_double_write_no_access_lines(
    api: Api, bot: FakeBot, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn logs a request whenever `uvicorn.access` has a handler to reach, at
    # the logger's level: this one would let every line through.
    handler = _Records()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    assert (await api.ok(tok(bot), "getMe"))["result"]["username"] == "acme_support_bot"
    assert handler.records == []
    assert [r for r in caplog.records if r.name.startswith("uvicorn")] == []
