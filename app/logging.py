"""Structured logging: structlog for our code, the same pipeline for stdlib loggers.

Every line passes `redact_secrets`, which removes Telegram bot tokens, `wsk_` API
tokens, webhook keys in URLs, and any value under a key named like a secret. It
runs for structlog events and for the standard library's and uvicorn's records
(via `ProcessorFormatter`), after exceptions are formatted, so a traceback that
quotes a token is redacted too. JSON in production, console otherwise; a request
id bound per request appears on every line (see `app.middleware`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "***"

# <bot id>:<secret part>; the secret part is 35 characters today, allow some slack.
# In a URL the colon may arrive percent-encoded.
_BOT_TOKEN = re.compile(r"(?<!\d)\d{3,}(?::|%3[Aa])[A-Za-z0-9_-]{30,}")
_API_TOKEN = re.compile(r"\bwsk_[A-Za-z0-9_-]{8,}")
# Query parameters that carry capabilities: the webhook `?key=`, tokens, secrets.
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:key|token|secret|secret_token|password|api_key)=)[^&\s\"']+"
)
# Field names whose values are secret. Identifiers and counts (token_id, key_id,
# *_count) stay readable: they are how an operator correlates events.
_SECRET_NAME = re.compile(
    r"(?i)(token|secret|password|passwd|authorization|cookie|api[_-]?key|(^|_)key(s)?$|vault)"
)
_PUBLIC_SUFFIX = re.compile(r"(?i)(_id|_ids|_count|_type|_hash_prefix)$")


def redact_text(text: str) -> str:
    """Remove anything shaped like a bot token, an API token or a secret query value."""
    text = _BOT_TOKEN.sub("<redacted-bot-token>", text)
    text = _API_TOKEN.sub("wsk_<redacted>", text)
    return _SECRET_QUERY.sub(r"\1" + REDACTED, text)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _PUBLIC_SUFFIX.search(name)


def _redact_value(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and is_secret_name(k)
                else _redact_value(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Arbitrary objects are rendered later with repr(); redact that text now.
    return redact_text(repr(value))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last line of defence against secrets in logs."""
    for name, value in list(event_dict.items()):
        if name in ("_record", "_from_structlog"):
            continue
        if is_secret_name(name):
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _redact_value(value)
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of the record.

    Binding the stream once breaks when stderr is replaced (test capture, daemon
    redirection). A failure to write must not print the record either: the
    standard `handleError` would dump the unredacted message and its arguments.
    """

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"logging error: a record from {record.name} could not be written\n")


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def configure_logging(*, json_output: bool, level: str = "INFO", access_log: bool = True) -> None:
    """Configure structlog and route the standard library (and uvicorn) through it.

    `access_log=False` silences uvicorn's per-request lines: uvicorn writes them
    whenever its access logger has a handler to reach, whatever its own flag says.
    """
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_shared_processors()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
        uvicorn_logger.disabled = False
        uvicorn_logger.setLevel(logging.NOTSET)
    if not access_log:
        logging.getLogger("uvicorn.access").propagate = False
    # httpx logs every request URL at INFO (Telegram URLs carry the bot token);
    # aiosqlite logs every statement's parameters at DEBUG.
    for name in ("httpx", "httpcore", "aiosqlite", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)
