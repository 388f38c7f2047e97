from __future__ import annotations

import json
import logging

import pytest
import structlog

from app.logging import configure_logging, redact_text

BOT_TOKEN = "123456789:AAH" + "x" * 32
API_TOKEN = "wsk_" + "Q" * 43
SECRET = "s3cr3t-value-never-logged"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> object:
    configure_logging(json_output=True, level="DEBUG")
    yield capsys
    configure_logging(json_output=False, level="DEBUG")


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
