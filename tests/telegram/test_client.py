"""The production Telegram client against the Bot API double (and a few mock transports)."""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from structlog.testing import capture_logs

from app.telegram.client import TelegramClient
from app.telegram.errors import (
    TelegramBadRequest,
    TelegramConflict,
    TelegramError,
    TelegramForbidden,
    TelegramMigrated,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramServerError,
    TelegramTooManyRequests,
    TelegramUnauthorized,
    redact_token_text,
)
from app.telegram.types import BotToken, BotUser, SentMessage, WebhookInfo
from tests.telegram_double.double import TelegramDouble
from tests.telegram_double.fixtures import load_update, telegram_double
from tests.telegram_double.state import FakeBot

__all__ = ["telegram_double"]

REPO = Path(__file__).resolve().parents[2]
WEBHOOK = "https://hooks.example.com/telegram/webhook/abc"
TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"


class Calls:
    """Records the client's on_call hook."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def __call__(self, method: str, outcome: str, seconds: float) -> None:
        self.seen.append((method, outcome, seconds))

    @property
    def outcomes(self) -> list[tuple[str, str]]:
        return [(method, outcome) for method, outcome, _ in self.seen]


HttpClient = httpx.AsyncClient | aiohttp.ClientSession


@pytest.fixture(params=["httpx", "aiohttp"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[HttpClient]:
    """Each client test runs over both transports (the API's and the worker's)."""
    if request.param == "httpx":
        async with httpx.AsyncClient() as client:
            yield client
    else:
        async with aiohttp.ClientSession() as session:
            yield session


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def client(http: HttpClient, telegram_double: TelegramDouble, calls: Calls) -> TelegramClient:
    return TelegramClient(http, telegram_double.base_url, request_timeout=2.0, on_call=calls)


@pytest.fixture
def bot(telegram_double: TelegramDouble) -> FakeBot:
    return telegram_double.add_bot(username="acme_support_bot", first_name="Acme")


def token_of(bot: FakeBot) -> BotToken:
    assert bot.token is not None
    return BotToken(bot.token)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_token_hidden(exc: BaseException, token: str) -> None:
    """The token must not be reachable from anything an error handler might print."""
    rendered = [
        str(exc),
        repr(exc),
        repr(exc.args),
        "".join(traceback.format_exception(exc)),
        repr(vars(exc)),
    ]
    for text in rendered:
        assert token not in text
    # Network errors must not keep the httpx exception (its message has the URL).
    assert exc.__cause__ is None
    assert exc.__context__ is None


# -- BotToken and redaction ----------------------------------------------------


def test_bot_token_never_shows_itself() -> None:
    token = BotToken(TOKEN)
    for shown in (repr(token), str(token), f"{token}", f"{token!r}", repr([token])):
        assert TOKEN not in shown
    assert repr(token) == "BotToken(***)"
    assert str(token) == "BotToken(***)"
    assert token.reveal() == TOKEN
    assert token.bot_id_hint == 123456789


def test_bot_token_equality_and_hint_for_malformed() -> None:
    assert BotToken(TOKEN) == BotToken(TOKEN)
    assert BotToken(TOKEN) != BotToken(TOKEN + "x")
    assert len({BotToken(TOKEN), BotToken(TOKEN)}) == 1
    assert BotToken("garbage").bot_id_hint is None
    assert BotToken("12ab:xyz").bot_id_hint is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TOKEN, True),
        ("1:" + "a" * 35, True),
        ("123456789:" + "a" * 34, False),
        ("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw!", False),
        ("bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq", False),
        (" " + TOKEN, False),
        (TOKEN + "\n", False),
        ("", False),
    ],
)
def test_is_well_formed(text: str, expected: bool) -> None:
    assert BotToken.is_well_formed(text) is expected


def test_redact_token_text() -> None:
    text = f"GET https://api.telegram.org/bot{TOKEN}/getMe failed; id 123:short stays"
    redacted = redact_token_text(text)
    assert TOKEN not in redacted
    assert redacted == (
        "GET https://api.telegram.org/bot<redacted>/getMe failed; id 123:short stays"
    )
    # Exact secrets are hidden even when they do not look like tokens.
    assert redact_token_text("odd token: sekrit/with/slashes", "sekrit/with/slashes") == (
        "odd token: <redacted>"
    )


# -- typed results -------------------------------------------------------------


async def test_get_me_returns_the_bot_and_reports_the_call(
    client: TelegramClient, bot: FakeBot, calls: Calls
) -> None:
    me = await client.get_me(token_of(bot))
    assert me == BotUser(
        id=bot.bot_id,
        is_bot=True,
        first_name="Acme",
        username="acme_support_bot",
        can_join_groups=True,
        can_read_all_group_messages=False,
        supports_inline_queries=False,
    )
    assert calls.outcomes == [("getMe", "ok")]
    assert calls.seen[0][2] > 0


async def test_get_me_accepts_a_plain_string_token(client: TelegramClient, bot: FakeBot) -> None:
    assert bot.token is not None
    assert (await client.get_me(bot.token)).id == bot.bot_id


async def test_set_webhook_sends_only_given_params(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    description = await client.set_webhook(
        token_of(bot),
        url=WEBHOOK,
        secret_token="s3cr3t",
        allowed_updates=["message", "my_chat_member"],
        max_connections=None,
    )
    assert description == "Webhook was set"
    [call] = telegram_double.calls_for("setWebhook")
    assert call.params == {
        "url": WEBHOOK,
        "secret_token": "s3cr3t",
        "allowed_updates": ["message", "my_chat_member"],
    }
    assert call.encoding == "json"
    hook = telegram_double.webhook(bot)
    assert (hook.url, hook.secret_token, hook.max_connections) == (WEBHOOK, "s3cr3t", 40)


async def test_set_webhook_again_reports_already_set(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.enforce_set_webhook_rate_limit = False
    kwargs: dict[str, Any] = {
        "url": WEBHOOK,
        "secret_token": "s",
        "allowed_updates": None,
        "max_connections": 10,
    }
    assert await client.set_webhook(token_of(bot), **kwargs) == "Webhook was set"
    assert await client.set_webhook(token_of(bot), **kwargs) == "Webhook is already set"


async def test_set_webhook_drop_pending_updates(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.queue_update(bot, load_update("01_message"))
    await client.set_webhook(
        token_of(bot),
        url=WEBHOOK,
        secret_token=None,
        allowed_updates=None,
        max_connections=None,
        drop_pending_updates=True,
    )
    assert telegram_double.webhook(bot).pending_update_count == 0


async def test_delete_webhook(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.set_webhook_url(bot, WEBHOOK)
    telegram_double.queue_update(bot, load_update("01_message"))
    assert await client.delete_webhook(token_of(bot)) == "Webhook was deleted"
    assert telegram_double.webhook(bot).pending_update_count == 1
    done = await client.delete_webhook(token_of(bot), drop_pending_updates=True)
    assert done == "Webhook is already deleted"
    assert telegram_double.webhook(bot).pending_update_count == 0


async def test_get_webhook_info_when_unset(client: TelegramClient, bot: FakeBot) -> None:
    info = await client.get_webhook_info(token_of(bot))
    assert info == WebhookInfo(
        url="",
        has_custom_certificate=False,
        pending_update_count=0,
        ip_address=None,
        last_error_date=None,
        last_error_message=None,
        last_synchronization_error_date=None,
        max_connections=None,
        allowed_updates=None,
    )
    assert info.url == ""


async def test_get_webhook_info_with_every_field(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    await client.set_webhook(
        token_of(bot),
        url=WEBHOOK,
        secret_token=None,
        allowed_updates=["message"],
        max_connections=5,
    )
    telegram_double.queue_update(bot, load_update("01_message"))
    telegram_double.set_webhook_error(
        bot,
        "Wrong response from the webhook: 401 Unauthorized",
        1_750_000_001,
        last_synchronization_error_date=1_750_000_002,
    )
    info = await client.get_webhook_info(token_of(bot))
    assert info == WebhookInfo(
        url=WEBHOOK,
        has_custom_certificate=False,
        pending_update_count=1,
        ip_address=None,
        last_error_date=1_750_000_001,
        last_error_message="Wrong response from the webhook: 401 Unauthorized",
        last_synchronization_error_date=1_750_000_002,
        max_connections=5,
        allowed_updates=["message"],
    )


async def test_send_message_with_reply_and_options(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    sent = await client.send_message(
        token_of(bot),
        chat_id=218485655,
        text="<b>hello</b>",
        parse_mode="HTML",
        reply_to_message_id=6557,
        message_thread_id=3,
        disable_notification=True,
    )
    assert isinstance(sent, SentMessage)
    assert (sent.message_id, sent.chat_id) == (1, 218485655)
    assert sent.date > 1_600_000_000
    [call] = telegram_double.calls_for("sendMessage")
    assert call.params == {
        "chat_id": 218485655,
        "text": "<b>hello</b>",
        "parse_mode": "HTML",
        "reply_parameters": {"message_id": 6557},
        "message_thread_id": 3,
        "disable_notification": True,
    }
    second = await client.send_message(token_of(bot), chat_id=218485655, text="again")
    assert second.message_id == 2


async def test_send_message_business_and_topic_params(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    await client.send_message(
        token_of(bot),
        chat_id="@acme_news",
        text="hi",
        business_connection_id="bc1",
        direct_messages_topic_id=9,
    )
    [call] = telegram_double.calls_for("sendMessage")
    assert call.params["business_connection_id"] == "bc1"
    assert call.params["direct_messages_topic_id"] == 9
    assert call.params["chat_id"] == "@acme_news"


async def test_get_updates_returns_raw_dicts_and_honours_offset(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    # Two real updates with consecutive ids, as Telegram numbers them.
    first = telegram_double.queue_update(bot, load_update("02_message"))
    second = telegram_double.queue_update(bot, load_update("03_message"))
    assert second == first + 1
    updates = await client.get_updates(token_of(bot))
    assert updates == [load_update("02_message"), load_update("03_message")]
    later = await client.get_updates(token_of(bot), offset=first + 1, limit=10)
    assert [u["update_id"] for u in later] == [second]
    assert telegram_double.webhook(bot).pending_update_count == 1


async def test_get_updates_long_poll_extends_the_read_timeout(
    http: HttpClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    telegram_double.long_poll_cap = 1.0
    short = TelegramClient(http, telegram_double.base_url, request_timeout=0.3)
    # The server waits ~1 s, longer than request_timeout: only the extension saves it.
    assert await short.get_updates(token_of(bot), timeout=1) == []


async def test_timeouts_are_explicit_per_request() -> None:
    seen: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"ok": True, "result": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = TelegramClient(http, "http://telegram.test", request_timeout=4.0)
        await client.get_updates(TOKEN, timeout=25)
        await client.call(TOKEN, "getMe")
    assert seen[0] == {"connect": 4.0, "read": 29.0, "write": 4.0, "pool": 4.0}
    assert seen[1] == {"connect": 4.0, "read": 4.0, "write": 4.0, "pool": 4.0}


async def test_client_does_not_close_the_shared_http_client(
    client: TelegramClient, http: HttpClient, bot: FakeBot
) -> None:
    await client.get_me(token_of(bot))
    closed = http.is_closed if isinstance(http, httpx.AsyncClient) else http.closed
    assert not closed


# -- typed errors --------------------------------------------------------------


async def test_unknown_token_is_unauthorized(client: TelegramClient, calls: Calls) -> None:
    with pytest.raises(TelegramUnauthorized) as caught:
        await client.get_me(BotToken(TOKEN))
    assert caught.value.error_code == 401
    assert caught.value.description == "Unauthorized"
    assert caught.value.method == "getMe"
    assert caught.value.retryable is False
    assert calls.outcomes == [("getMe", "unauthorized")]
    assert_token_hidden(caught.value, TOKEN)


async def test_malformed_token_is_unauthorized_and_stays_hidden(client: TelegramClient) -> None:
    odd = "12345/../../etc/passwd?x=1"
    with pytest.raises(TelegramUnauthorized) as caught:
        await client.get_me(odd)
    assert caught.value.description == "Unauthorized: invalid token specified"
    assert_token_hidden(caught.value, odd)


async def test_unknown_method_is_not_found(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    with pytest.raises(TelegramNotFound) as caught:
        await client.call(token_of(bot), "getMee")
    assert (caught.value.error_code, caught.value.description) == (404, "Not Found")
    assert len(telegram_double.take_violations()) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "description"),
    [
        (403, TelegramForbidden, "Forbidden: bot was blocked by the user"),
        (403, TelegramForbidden, "Forbidden: bot was kicked from the group chat"),
        (400, TelegramBadRequest, "Bad Request: chat not found"),
        (409, TelegramConflict, "Conflict: terminated by other getUpdates request"),
        (500, TelegramServerError, "Internal Server Error"),
        (502, TelegramServerError, "Bad Gateway"),
        (420, TelegramError, "Flood"),
    ],
)
async def test_error_codes_map_to_types(
    client: TelegramClient,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    status: int,
    error_type: type[TelegramError],
    description: str,
) -> None:
    telegram_double.fail_next("sendMessage", status=status, description=description)
    with pytest.raises(TelegramError) as caught:
        await client.send_message(token_of(bot), chat_id=1, text="x")
    assert type(caught.value) is error_type
    assert (caught.value.error_code, caught.value.description) == (status, description)
    assert caught.value.retryable is (status >= 500)


async def test_blocked_and_missing_chats(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot, calls: Calls
) -> None:
    telegram_double.set_chat(bot, 77, "blocked")
    telegram_double.set_chat(bot, 78, "not_found")
    with pytest.raises(TelegramForbidden):
        await client.send_message(token_of(bot), chat_id=77, text="x")
    with pytest.raises(TelegramBadRequest) as caught:
        await client.send_message(token_of(bot), chat_id=78, text="x")
    assert not isinstance(caught.value, TelegramMigrated)
    assert calls.outcomes == [("sendMessage", "forbidden"), ("sendMessage", "bad_request")]


async def test_empty_text_is_bad_request(client: TelegramClient, bot: FakeBot) -> None:
    with pytest.raises(TelegramBadRequest) as caught:
        await client.send_message(token_of(bot), chat_id=1, text=" ")
    assert caught.value.description == "Bad Request: message text is empty"


async def test_migrated_group(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot, calls: Calls
) -> None:
    telegram_double.set_chat(bot, -555, "migrated", migrate_to_chat_id=-1000555)
    with pytest.raises(TelegramMigrated) as caught:
        await client.send_message(token_of(bot), chat_id=-555, text="x")
    assert isinstance(caught.value, TelegramBadRequest)
    assert caught.value.migrate_to_chat_id == -1000555
    assert caught.value.description == "Bad Request: group chat was upgraded to a supergroup chat"
    assert calls.outcomes == [("sendMessage", "migrated")]


async def test_too_many_requests_has_retry_after(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot, calls: Calls
) -> None:
    telegram_double.fail_next("sendMessage", status=429, retry_after=17)
    with pytest.raises(TelegramTooManyRequests) as caught:
        await client.send_message(token_of(bot), chat_id=1, text="x")
    assert caught.value.retry_after == 17
    assert caught.value.description == "Too Many Requests: retry after 17"
    assert caught.value.retryable is True
    assert calls.outcomes == [("sendMessage", "too_many_requests")]


async def test_set_webhook_twice_quickly_is_too_many_requests(
    client: TelegramClient, bot: FakeBot
) -> None:
    kwargs: dict[str, Any] = {
        "secret_token": None,
        "allowed_updates": None,
        "max_connections": None,
    }
    await client.set_webhook(token_of(bot), url=WEBHOOK, **kwargs)
    with pytest.raises(TelegramTooManyRequests) as caught:
        await client.set_webhook(token_of(bot), url=WEBHOOK + "/2", **kwargs)
    assert caught.value.retry_after == 1


async def test_retry_after_falls_back_to_the_header() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"ok": False, "error_code": 429, "description": "Too Many Requests"}
        return httpx.Response(429, json=body, headers={"Retry-After": "12"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = TelegramClient(http, "http://telegram.test", request_timeout=1.0)
        with pytest.raises(TelegramTooManyRequests) as caught:
            await client.get_me(TOKEN)
    assert caught.value.retry_after == 12


async def test_conflict_while_webhook_is_active(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot, calls: Calls
) -> None:
    telegram_double.set_webhook_url(bot, WEBHOOK)
    with pytest.raises(TelegramConflict) as caught:
        await client.get_updates(token_of(bot))
    assert caught.value.description.startswith("Conflict: can't use getUpdates method")
    assert calls.outcomes == [("getUpdates", "conflict")]


async def test_garbled_answer_is_server_error(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot, calls: Calls
) -> None:
    telegram_double.fail_next("getMe", status=502, raw_body="<html>502 Bad Gateway</html>")
    with pytest.raises(TelegramServerError) as caught:
        await client.get_me(token_of(bot))
    assert caught.value.error_code == 502
    assert "non-JSON" in caught.value.description
    assert calls.outcomes == [("getMe", "server_error")]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"ok": true}',
        b'{"ok": true, "result": {"id": "not-an-int", "is_bot": true, "first_name": "x"}}',
        b'{"ok": true, "result": {"is_bot": true, "first_name": "x"}}',
        b'{"ok": true, "result": [1, 2]}',
    ],
)
async def test_unexpected_success_shapes_are_server_errors(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = TelegramClient(http, "http://telegram.test", request_timeout=1.0)
        with pytest.raises(TelegramServerError):
            await client.get_me(TOKEN)


async def test_token_in_a_description_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"ok": False, "error_code": 400, "description": f"Bad Request: bot{TOKEN} oops"}
        return httpx.Response(400, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = TelegramClient(http, "http://telegram.test", request_timeout=1.0)
        with pytest.raises(TelegramBadRequest) as caught:
            await client.get_me(TOKEN)
    assert caught.value.description == "Bad Request: bot<redacted> oops"
    assert_token_hidden(caught.value, TOKEN)


async def test_hung_request_times_out(
    http: HttpClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    calls = Calls()
    client = TelegramClient(http, telegram_double.base_url, request_timeout=0.2, on_call=calls)
    telegram_double.hang_next("getMe")
    with pytest.raises(TelegramNetworkError) as caught:
        await client.get_me(token_of(bot))
    assert caught.value.timeout is True
    assert caught.value.error_code is None
    assert caught.value.retryable is True
    assert calls.outcomes == [("getMe", "timeout")]
    assert 0.15 < calls.seen[0][2] < 2.0
    assert bot.token is not None
    assert_token_hidden(caught.value, bot.token)


async def test_slow_answer_times_out_but_fast_enough_one_passes(
    http: HttpClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    client = TelegramClient(http, telegram_double.base_url, request_timeout=0.3)
    telegram_double.delay_next("getMe", 0.6)
    with pytest.raises(TelegramNetworkError) as caught:
        await client.get_me(token_of(bot))
    assert caught.value.timeout is True
    telegram_double.delay_next("getMe", 0.05)
    assert (await client.get_me(token_of(bot))).id == bot.bot_id


async def test_connection_refused_is_network_error(http: HttpClient, calls: Calls) -> None:
    client = TelegramClient(
        http, f"http://127.0.0.1:{closed_port()}", request_timeout=1.0, on_call=calls
    )
    with pytest.raises(TelegramNetworkError) as caught:
        await client.get_me(BotToken(TOKEN))
    assert caught.value.timeout is False
    # Nothing reached Telegram: the dispatcher may retry without risking a second send.
    assert caught.value.maybe_delivered is False
    expected = "ConnectError" if isinstance(http, httpx.AsyncClient) else "ClientConnectorError"
    assert caught.value.description == f"transport error ({expected})"
    assert calls.outcomes == [("getMe", "network_error")]
    assert_token_hidden(caught.value, TOKEN)


async def test_failing_metrics_hook_does_not_fail_the_call(
    http: HttpClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    def broken(method: str, outcome: str, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    client = TelegramClient(http, telegram_double.base_url, request_timeout=1.0, on_call=broken)
    assert (await client.get_me(token_of(bot))).id == bot.bot_id


def test_request_timeout_must_be_positive(http: HttpClient) -> None:
    with pytest.raises(ValueError, match="positive"):
        TelegramClient(http, "http://telegram.test", request_timeout=0)


# -- logs ------------------------------------------------------------------------


async def _exercise(client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot) -> None:
    await client.get_me(token_of(bot))
    telegram_double.fail_next("sendMessage", status=403)
    with pytest.raises(TelegramForbidden):
        await client.send_message(token_of(bot), chat_id=1, text="x")
    with pytest.raises(TelegramUnauthorized):
        await client.get_me(BotToken(TOKEN))


async def test_structlog_lines_carry_no_token(
    client: TelegramClient, telegram_double: TelegramDouble, bot: FakeBot
) -> None:
    with capture_logs() as logs:
        await _exercise(client, telegram_double, bot)
    requests = [entry for entry in logs if entry["event"] == "telegram.request"]
    assert [(e["method"], e["outcome"], e["status"]) for e in requests] == [
        ("getMe", "ok", 200),
        ("sendMessage", "forbidden", 403),
        ("getMe", "unauthorized", 401),
    ]
    assert [e["log_level"] for e in requests] == ["debug", "info", "info"]
    assert all(isinstance(e["duration_ms"], float) for e in requests)
    assert requests[0]["bot_id"] == bot.bot_id
    dumped = repr(logs)
    assert bot.token is not None
    assert bot.token not in dumped
    assert TOKEN not in dumped
    assert telegram_double.base_url not in dumped


async def test_stdlib_logs_carry_no_token(
    client: TelegramClient,
    telegram_double: TelegramDouble,
    bot: FakeBot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await _exercise(client, telegram_double, bot)
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    assert bot.token is not None
    assert bot.token not in caplog.text
    assert TOKEN not in caplog.text


def test_httpx_would_log_the_url_if_left_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Guards the test above: it proves something only because httpx really logs
    # request URLs at INFO when allowed to (redacted, as every record is once the
    # logging is configured, but logged).
    caplog.set_level(logging.INFO, logger="httpx")
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with httpx.Client(transport=transport) as plain:
        plain.post(f"http://telegram.test/bot{TOKEN}/getMe")
    logged = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert any("http://telegram.test/bot" in line and "/getMe" in line for line in logged)
