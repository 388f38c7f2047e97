from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator

import pytest
import structlog

from app.logging import configure_logging, redact_text

BOT_TOKEN = "123456789:AAH" + "x" * 32
API_TOKEN = "wsk_" + "Q" * 43
WEBHOOK_KEY = "k" * 30
SECRET = "s3cr3t-value-never-logged"
PLAINTEXTS = (BOT_TOKEN, BOT_TOKEN.split(":")[1], API_TOKEN, WEBHOOK_KEY)


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> object:
    # The test harness puts the session's logging configuration back afterwards.
    configure_logging(json_output=True, level="DEBUG")
    return capsys


class Collecting(logging.Handler):
    """A handler of the kind a deployment adds (an error tracker, a log shipper):
    it keeps the records themselves and formats them with a plain Formatter."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def everything_seen(self) -> str:
        """All a handler could read from its records: message and arguments as
        given, the merged message, the exception (as text and as an object), the stack."""
        seen = list(self.lines)
        for record in self.records:
            seen += [repr(record.msg), repr(record.args), record.getMessage()]
            seen += [record.exc_text or "", record.stack_info or ""]
            if record.exc_info:
                seen.append("".join(traceback.format_exception(*record.exc_info)))
        return "\n".join(seen)


@pytest.fixture
def handlers() -> Iterator[dict[str, Collecting]]:
    """A handler of the test's own on a project logger, uvicorn's access logger and
    root, added (as a deployment would) after the service configured its logging."""
    configure_logging(json_output=True, level="DEBUG")
    attached = {name: Collecting() for name in ("app", "uvicorn.access", "")}
    for name, handler in attached.items():
        logging.getLogger(name).addHandler(handler)
    yield attached
    for name, handler in attached.items():
        logging.getLogger(name).removeHandler(handler)


def test_redaction_processor_removes_tokens_and_secret_fields(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    log = structlog.get_logger("test")
    log.info(
        f"calling https://api.telegram.org/bot{BOT_TOKEN}/getMe",
        api_token=API_TOKEN,
        secret=SECRET,
        nested={"webhook_secret": SECRET, "note": f"Bearer {API_TOKEN}"},
        url="/api/v1/integrations/telegram/webhook?key=abcdefghijkl&x=1",
        token_id="c0ffee",
    )
    err = json_logs.readouterr().err
    assert err.strip(), "nothing was logged"
    for plaintext in (BOT_TOKEN, API_TOKEN, SECRET, "abcdefghijkl"):
        assert plaintext not in err
    line = json.loads(err.strip().splitlines()[-1])
    assert line["secret"] == "***"
    assert line["nested"]["webhook_secret"] == "***"
    assert line["token_id"] == "c0ffee"  # identifiers stay readable
    assert "?key=***&x=1" in line["url"]


def test_standard_library_and_uvicorn_records_are_redacted(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger("uvicorn.access").info(
        '127.0.0.1 - "POST /api/v1/integrations/telegram/webhook?key=%s HTTP/1.1" 200', "k" * 30
    )
    logging.getLogger("some.library").warning("token is %s", BOT_TOKEN)
    err = json_logs.readouterr().err
    assert "k" * 30 not in err
    assert BOT_TOKEN not in err
    assert err.count("\n") >= 2


def test_exception_tracebacks_are_redacted(json_logs: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("test")
    try:
        raise ValueError(f"bad token {BOT_TOKEN}")
    except ValueError:
        log.exception("failed")
    err = json_logs.readouterr().err
    assert "ValueError" in err
    assert BOT_TOKEN not in err


def test_a_percent_encoded_token_in_a_url_is_redacted_too() -> None:
    encoded = BOT_TOKEN.replace(":", "%3A")
    line = redact_text(f'"POST /bot{encoded}/getMe HTTP/1.1" 200')
    assert encoded not in line and BOT_TOKEN.split(":")[1] not in line


def test_redact_text_leaves_ordinary_text() -> None:
    assert redact_text("chat 12345 said hello") == "chat 12345 said hello"
    assert BOT_TOKEN not in redact_text(f"x {BOT_TOKEN} y")


def _raise_with_token_in_the_cause() -> None:
    try:
        raise ConnectionError(f"POST https://api.telegram.org/bot{BOT_TOKEN}/getMe failed")
    except ConnectionError as exc:
        raise RuntimeError("the Telegram call failed") from exc


def test_a_handler_of_its_own_sees_only_redacted_records(
    handlers: dict[str, Collecting],
) -> None:
    structlog.get_logger("app.telegram.client").warning(
        "telegram.request", url=f"https://api.telegram.org/bot{BOT_TOKEN}/getMe", note=API_TOKEN
    )
    logging.getLogger("app.connections.service").info("connected %s with %s", BOT_TOKEN, API_TOKEN)
    try:
        _raise_with_token_in_the_cause()
    except RuntimeError:
        logging.getLogger("app.ingress.polling").exception("poll of %s failed", "bot 123456789")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "POST",
        f"/api/v1/integrations/telegram/webhook?key={WEBHOOK_KEY}",
        "1.1",
        200,
    )
    logging.getLogger("some.library").warning(
        "calling %(url)s", {"url": f"https://api.telegram.org/bot{BOT_TOKEN}/getMe"}
    )
    logging.getLogger("some.library").error("token %s", API_TOKEN, stack_info=True)

    assert [len(handlers[name].records) for name in ("app", "uvicorn.access", "")] == [3, 1, 6]
    for name, handler in handlers.items():
        seen = handler.everything_seen()
        for plaintext in PLAINTEXTS:
            assert plaintext not in seen, f"{plaintext!r} reached the handler on {name!r}"
    lines = "\n".join(handlers[""].lines)
    # Redacted, not dropped: the lines stay readable, the traceback included.
    assert "/bot<redacted-bot-token>/getMe" in lines
    assert "webhook?key=*** HTTP/1.1" in lines
    assert "connected <redacted-bot-token> with wsk_<redacted>" in lines
    assert "ConnectionError: POST https://api.telegram.org/bot<redacted-bot-token>" in lines


def test_a_record_with_nothing_to_redact_keeps_its_arguments(
    handlers: dict[str, Collecting],
) -> None:
    # uvicorn's own access formatter, for one, reads them.
    access = ("127.0.0.1:5000", "GET", "/health", "1.1", 200)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', *access)
    (record,) = handlers["uvicorn.access"].records
    assert record.args == access


def test_a_library_traceback_is_printed_redacted(json_logs: pytest.CaptureFixture[str]) -> None:
    try:
        _raise_with_token_in_the_cause()
    except RuntimeError:
        logging.getLogger("some.library").exception("call failed")
    line = json.loads(json_logs.readouterr().err.strip().splitlines()[-1])
    assert (
        "ConnectionError: POST https://api.telegram.org/bot<redacted-bot-token>"
        in (line["exception"])
    )
    assert "RuntimeError: the Telegram call failed" in line["exception"]
    assert BOT_TOKEN not in json.dumps(line)


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "console"])
def test_uvicorn_lines_carry_no_terminal_colour_codes(
    capsys: pytest.CaptureFixture[str], json_output: bool
) -> None:
    configure_logging(json_output=json_output, level="DEBUG")
    capsys.readouterr()
    # What uvicorn logs at start-up: the message, and a copy with escape codes.
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]",
        4242,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    err = capsys.readouterr().err
    assert "Started server process [4242]" in err
    assert "color_message" not in err and "\x1b" not in err and "\\u001b" not in err
