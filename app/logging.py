"""Structured logging: structlog for our code, the same pipeline for stdlib loggers.

Secrets are removed from the record itself, as it is created: Telegram bot tokens,
`wsk_` API tokens and webhook keys in URLs in the message, its arguments, the
formatted exception and the stack (`redact_record`). So any handler a deployment
adds (an error tracker, a log shipper) sees only redacted text, whichever logger
the record comes from. The project's own handler also passes every line through
`redact_secrets`, which in addition blanks any field named like a secret. JSON in
production, console otherwise; a request id bound per request appears on every
line (see `app.middleware`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Mapping
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


_TRACEBACK_FORMATTER = logging.Formatter()
_RecordFactory = Callable[..., logging.LogRecord]


def _is_plain(value: object) -> bool:
    """A record argument a handler may keep: a number, or text with nothing to redact."""
    if isinstance(value, str):
        return redact_text(value) == value
    return value is None or isinstance(value, int | float)


def _redact_exception(record: logging.LogRecord) -> None:
    if not record.exc_info or record.exc_info[1] is None or record.exc_text:
        return
    text = _TRACEBACK_FORMATTER.formatException(record.exc_info)
    redacted = redact_text(text)
    if redacted != text:
        # The exception object would still carry the secret to a handler that
        # renders it itself; the redacted text is what every formatter prints.
        record.exc_info = None
        record.exc_text = redacted


def redact_record(record: logging.LogRecord) -> None:
    """Remove secrets from `record` in place: message, arguments, exception, stack.

    A record with nothing to redact is left as it is, so handlers that read
    `args` (uvicorn's access formatter) keep working. One that carries a secret is
    flattened: `msg` becomes the redacted message and `args` is emptied.
    structlog's event dicts are redacted field by field, as `redact_secrets` does.
    Attributes added through `extra=` are set after the record is created and are
    left to the handler; the project's own handler redacts them.
    """
    if isinstance(record.msg, Mapping) and not record.args:
        record.msg = _redact_value(record.msg)
    else:
        try:
            message = record.getMessage()
        except Exception:
            # A malformed call: keep the error for the handler to report, with
            # nothing secret in what its error report prints.
            record.msg = redact_text(str(record.msg))
            record.args = _redact_value(record.args)
        else:
            redacted = redact_text(message)
            values = record.args.values() if isinstance(record.args, Mapping) else record.args
            if redacted != message or not all(_is_plain(v) for v in values or ()):
                record.msg, record.args = redacted, ()
    _redact_exception(record)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


class _RedactingRecordFactory:
    """Wraps the process's record factory so that every record is born redacted.

    A filter on a logger runs only for records logged on that very logger, not for
    those its children propagate; the record factory sees every record of every
    logger, the ones of libraries included.
    """

    def __init__(self, inner: _RecordFactory) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        redact_record(record)
        return record


def _install_record_redaction() -> None:
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(current))


def _exception_from_record(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Render the exception text `redact_record` left in place of an exception."""
    record = event_dict.get("_record")
    if record is not None and record.exc_text and "exc_info" not in event_dict:
        event_dict["exception"] = record.exc_text
    return event_dict


def _drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # uvicorn repeats its message with terminal escape codes for its own formatter.
    event_dict.pop("color_message", None)
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

    From then on every log record of the process is redacted as it is created
    (`redact_record`), whichever handler receives it.

    `access_log=False` silences uvicorn's per-request lines: uvicorn writes them
    whenever its access logger has a handler to reach, whatever its own flag says.
    """
    _install_record_redaction()
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            # First: an event below the logger's level costs nothing more (the
            # Telegram client logs every call at DEBUG, on the dispatcher's hot path).
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
            _exception_from_record,
            *_shared_processors(),
        ],
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
