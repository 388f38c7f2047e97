"""The process's logging configuration, captured so a test can put it back.

Logging is process-wide: a test (or a server it starts in-process) that changes a
logger's handlers, level or propagation changes what every later test sees and
captures. `LoggingState.capture()` records everything configuration touches:
each logger's handlers, filters, level, propagation and disabled flag, the global
`logging.disable` level, the record factory and structlog's configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog


@dataclass(frozen=True)
class LoggerState:
    handlers: tuple[logging.Handler, ...]
    filters: tuple[Any, ...]
    level: int
    propagate: bool
    disabled: bool

    @classmethod
    def of(cls, logger: logging.Logger) -> LoggerState:
        return cls(
            handlers=tuple(logger.handlers),
            filters=tuple(logger.filters),
            level=logger.level,
            propagate=logger.propagate,
            disabled=logger.disabled,
        )

    def apply(self, logger: logging.Logger) -> None:
        logger.handlers = list(self.handlers)
        logger.filters = list(self.filters)
        logger.setLevel(self.level)  # also clears the loggers' cached levels
        logger.propagate = self.propagate
        logger.disabled = self.disabled


# What a logger created with logging.getLogger() starts with.
_PRISTINE = LoggerState(
    handlers=(), filters=(), level=logging.NOTSET, propagate=True, disabled=False
)


def _loggers() -> dict[str, logging.Logger]:
    found = {
        name: logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    found[""] = logging.getLogger()
    return found


@dataclass(frozen=True)
class LoggingState:
    loggers: dict[str, LoggerState]
    disable_level: int
    record_factory: Callable[..., logging.LogRecord]
    structlog_config: dict[str, Any]

    @classmethod
    def capture(cls) -> LoggingState:
        return cls(
            loggers={name: LoggerState.of(logger) for name, logger in _loggers().items()},
            disable_level=logging.root.manager.disable,
            record_factory=logging.getLogRecordFactory(),
            # A copy: the processor list is structlog's own, not a snapshot.
            structlog_config={
                key: list(value) if isinstance(value, list) else value
                for key, value in structlog.get_config().items()
            },
        )

    def restore(self) -> None:
        for name, logger in _loggers().items():
            # A logger first used since the capture goes back to a new logger's state.
            self.loggers.get(name, _PRISTINE).apply(logger)
        logging.disable(self.disable_level)
        logging.setLogRecordFactory(self.record_factory)
        structlog.configure(**self.structlog_config)

    def differences(self, other: LoggingState) -> list[str]:
        """Names of what differs between two captures (loggers new in `other` that
        are still pristine do not count)."""
        changed = [
            f"logger {name or 'root'!r}"
            for name in sorted(self.loggers.keys() | other.loggers.keys())
            if self.loggers.get(name, _PRISTINE) != other.loggers.get(name, _PRISTINE)
        ]
        if self.disable_level != other.disable_level:
            changed.append("logging.disable level")
        if self.record_factory is not other.record_factory:
            changed.append("record factory")
        if self.structlog_config != other.structlog_config:
            changed.append("structlog configuration")
        return changed
