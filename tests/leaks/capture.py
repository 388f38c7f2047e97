"""A root logging handler that copies every record of the test process to the
leak check's evidence (see tests/leaks/plugin.py)."""

from __future__ import annotations

import contextlib
import logging

from tests.leaks.registry import session_registry


class _EvidenceHandler(logging.Handler):
    """Writes each record, formatted, to the evidence file."""

    def emit(self, record: logging.LogRecord) -> None:
        # Never print the record on a failure (the default handleError would).
        with contextlib.suppress(Exception):
            session_registry.add_text("log-records", self.format(record))


def install_log_capture() -> None:
    """Add the evidence handler to the root logger, with the formatter the root's
    first handler uses (the project's), unless it is there already."""
    root = logging.getLogger()
    if any(isinstance(handler, _EvidenceHandler) for handler in root.handlers):
        return
    handler = _EvidenceHandler(level=logging.NOTSET)
    if root.handlers and root.handlers[0].formatter is not None:
        handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
