"""The secrets the test run used, and where the run's output went, for the leak check.

Every bot token the Bot API double issues, every webhook secret and webhook key the
service registers with it (setWebhook's `secret_token` and the URL's `key`), and every
API token the fixtures mint is recorded here. So is the evidence: the log output of
the test process (a logging handler and pytest's captured output, see
`tests.leaks.plugin`), the logs of the processes tests start, dumps of the test
database taken before each test's tables are emptied, and every file the run left
under pytest's temporary directory (SQLite databases, data directories, logs).

At the end of the session `scan()` looks for each secret in all of it. A secret is
matched by its distinctive part: a bot token without its `<bot id>:` prefix (the id is
public and the colon may be percent-encoded), the others whole. Those parts are
made of URL-safe base64 characters, which neither JSON nor URL encoding changes, so
an encoded copy is found as well. Values shorter than `MIN_SECRET_LENGTH` (the odd
hand-written test value) are not recorded: real ones are 32 characters or more, and
a short one would match ordinary text.
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

MIN_SECRET_LENGTH = 16
# The window the search looks up; at most MIN_SECRET_LENGTH / 2, so that every
# copy of a secret contains a window aligned to a multiple of it.
_GRAM = 8
# An API token the service failed to redact, whether or not a fixture minted it
# (the CLI and `POST /api/v1/tokens` mint them too). The redacted form is
# `wsk_<redacted>`, which this does not match. A whole token only: "wsk_" by
# chance inside a longer run (a ciphertext's base64) is not one.
_API_TOKEN = re.compile(rb"(?<![A-Za-z0-9_-])wsk_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
# Files larger than this are read in pieces (with an overlap, so nothing is missed).
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """A secret found where it must not be."""

    kind: str
    where: str
    excerpt: str

    def describe(self) -> str:
        return f"{self.kind} in {self.where}: ...{self.excerpt}..."


@dataclass
class SecretRegistry:
    """Secrets by their distinctive part, and the evidence to search for them."""

    secrets: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    # Where the evidence directory is made (None: the system's temporary directory).
    evidence_root: Path | None = None
    scanned_files: int = 0
    scanned_bytes: int = 0
    _evidence_dir: Path | None = None
    _open: dict[str, TextIO] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- secrets ------------------------------------------------------------------

    def record(self, kind: str, value: str | None) -> None:
        """Remember `value` (a secret of `kind`) unless it is too short to be one."""
        if not value:
            return
        core = value.partition(":")[2] if kind == "bot_token" and ":" in value else value
        if len(core) >= MIN_SECRET_LENGTH:
            with self._lock:
                self.secrets.setdefault(core, kind)

    def record_webhook(self, url: str | None, secret_token: str | None) -> None:
        """The webhook secret and the `?key=` of a setWebhook call."""
        self.record("webhook_secret", secret_token)
        if url:
            for key in parse_qs(urlsplit(url).query).get("key", []):
                self.record("webhook_key", key)

    # -- evidence -----------------------------------------------------------------

    @property
    def evidence_dir(self) -> Path:
        """Where captured text is written (made on first use, kept if a leak is found)."""
        with self._lock:
            if self._evidence_dir is None:
                self._evidence_dir = Path(
                    tempfile.mkdtemp(prefix="leak-evidence-", dir=self.evidence_root)
                )
            return self._evidence_dir

    def add_text(self, name: str, text: str) -> None:
        """Append `text` to the evidence file `name` (e.g. `pytest-output`, `db-dump`)."""
        if not text:
            return
        directory = self.evidence_dir
        with self._lock:
            out = self._open.get(name)
            if out is None:
                out = (directory / f"{name}.txt").open(
                    "a", encoding="utf-8", errors="backslashreplace"
                )
                self._open[name] = out
            out.write(text if text.endswith("\n") else text + "\n")

    def watch_file(self, path: Path) -> None:
        """Scan this file (e.g. a subprocess's log) at the end, wherever it is."""
        with self._lock:
            self.files.append(path)

    def watch_directory(self, path: Path) -> None:
        """Scan every file under this directory at the end."""
        with self._lock:
            self.directories.append(path)

    # -- the check ----------------------------------------------------------------

    def scan(self) -> list[Finding]:
        """Every recorded secret found in the evidence; one finding per secret and place."""
        findings: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        self.scanned_files = self.scanned_bytes = 0
        for path in self._evidence_files():
            self.scanned_files += 1
            for finding in self.scan_file(path):
                if (finding.excerpt, finding.where) not in seen:
                    seen.add((finding.excerpt, finding.where))
                    findings.append(finding)
        return findings

    def scan_file(self, path: Path) -> Iterator[Finding]:
        try:
            with path.open("rb") as data:
                overlap = b""
                while chunk := data.read(_CHUNK):
                    self.scanned_bytes += len(chunk)
                    yield from self.scan_bytes(overlap + chunk, str(path))
                    # A secret cut in two by the chunk boundary is whole in the next read.
                    overlap = chunk[-256:]
        except OSError:
            return

    def scan_bytes(self, data: bytes, where: str) -> Iterator[Finding]:
        # Every secret is at least MIN_SECRET_LENGTH long, so any copy of one
        # covers some whole window of _GRAM bytes starting at a multiple of
        # _GRAM: looking up only those windows finds every candidate, at an
        # eighth of the cost of trying every position.
        with self._lock:
            grams: dict[bytes, list[tuple[bytes, int, str]]] = {}
            for core, kind in self.secrets.items():
                encoded = core.encode()
                for offset in range(len(encoded) - _GRAM + 1):
                    grams.setdefault(encoded[offset : offset + _GRAM], []).append(
                        (encoded, offset, kind)
                    )
        found: set[bytes] = set()
        if grams:
            for position in range(0, len(data) - _GRAM + 1, _GRAM):
                for encoded, offset, kind in grams.get(data[position : position + _GRAM], ()):
                    start = position - offset
                    if encoded not in found and start >= 0 and data.startswith(encoded, start):
                        found.add(encoded)
                        yield Finding(kind, where, _excerpt(encoded))
        for match in _API_TOKEN.finditer(data):
            yield Finding("api_token", where, _excerpt(match.group()))

    def _evidence_files(self) -> Iterable[Path]:
        with self._lock:
            for out in self._open.values():
                out.flush()
            files = list(self.files)
            directories = list(self.directories)
            if self._evidence_dir is not None:
                directories.append(self._evidence_dir)
        yield from (path for path in files if path.is_file())
        for directory in directories:
            yield from (path for path in sorted(directory.rglob("*")) if path.is_file())


def _excerpt(secret: bytes) -> str:
    # Enough to tell secrets apart in a report, not enough to use one.
    return secret[:6].decode(errors="replace") + "…"


# The registry of this test process.
session_registry = SecretRegistry()
record = session_registry.record
record_webhook = session_registry.record_webhook
add_text = session_registry.add_text
watch_file = session_registry.watch_file
watch_directory = session_registry.watch_directory
