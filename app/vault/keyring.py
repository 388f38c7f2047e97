"""The vault's keyring: which AES-256 keys exist and which one seals new secrets.

`VAULT_KEYS` holds comma-separated `key_id:key` entries, where `key` is 32 random
bytes in URL-safe base64 (padding optional). The first entry is the primary key:
new secrets are sealed with it, the others are kept only to open (and rotate)
older ciphertexts.

Nothing in this module ever puts key material into an exception message, a log
event or a repr: error messages name the entry position and key id only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from app.config import Settings

KEY_BYTES = 32
KEY_ID_PATTERN = r"[A-Za-z0-9_-]{1,32}"
DEV_KEY_FILE_NAME = "vault.key"
DEV_KEY_ID = "dev1"

_KEY_ID_RE = re.compile(KEY_ID_PATTERN)
# Only the URL-safe alphabet: standard base64 ('+', '/') is rejected so that one
# key has one spelling, and a pasted standard-alphabet key is caught early.
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class KeyringError(Exception):
    """A keyring could not be built. The message never contains key material."""


class _WarningLogger(Protocol):
    def warning(self, event: str, *args: Any, **kwargs: Any) -> Any: ...


class VaultKey:
    """One AES-256 key and its id. Immutable; its repr never shows the key."""

    __slots__ = ("_id", "_key")

    _id: str
    _key: bytes

    def __init__(self, key_id: str, key: bytes) -> None:
        if not is_valid_key_id(key_id):
            raise KeyringError(f"invalid key id: must match {KEY_ID_PATTERN}")
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise KeyringError(f"key {key_id!r} must be exactly {KEY_BYTES} bytes")
        object.__setattr__(self, "_id", key_id)
        object.__setattr__(self, "_key", key)

    @property
    def id(self) -> str:
        return self._id

    @property
    def key(self) -> bytes:
        return self._key

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VaultKey is immutable")

    def __repr__(self) -> str:
        return f"VaultKey(id={self._id!r}, key=***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VaultKey):
            return NotImplemented
        return self._id == other._id and secrets.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keys must not leak into pickles (caches, task queues, core dumps of
        # serialized state); pass VAULT_KEYS to each process instead.
        raise TypeError("VaultKey cannot be pickled")


class Keyring:
    """An ordered, non-empty set of keys with unique ids; the first is the primary."""

    __slots__ = ("_by_id", "_keys")

    _keys: tuple[VaultKey, ...]
    _by_id: dict[str, VaultKey]

    def __init__(self, keys: Iterable[VaultKey]) -> None:
        ordered = tuple(keys)
        if not ordered:
            raise KeyringError("the keyring is empty: at least one key is required")
        by_id: dict[str, VaultKey] = {}
        for position, key in enumerate(ordered, start=1):
            if not isinstance(key, VaultKey):
                raise TypeError("a Keyring holds VaultKey objects")
            if key.id in by_id:
                raise KeyringError(f"duplicate key id {key.id!r} (entry #{position})")
            by_id[key.id] = key
        object.__setattr__(self, "_keys", ordered)
        object.__setattr__(self, "_by_id", by_id)

    @property
    def primary(self) -> VaultKey:
        """The key that seals new secrets and lookup hashes."""
        return self._keys[0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        """All key ids, primary first."""
        return tuple(key.id for key in self._keys)

    def get(self, key_id: str) -> VaultKey | None:
        """The key with this id, or None when the keyring does not hold it."""
        return self._by_id.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __iter__(self) -> Iterator[VaultKey]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Keyring is immutable")

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary.id!r}, key_ids={list(self.key_ids)!r})"

    __str__ = __repr__


def is_valid_key_id(key_id: object) -> bool:
    return isinstance(key_id, str) and _KEY_ID_RE.fullmatch(key_id) is not None


def encode_key(key: bytes) -> str:
    """URL-safe base64 without padding, the spelling `VAULT_KEYS` uses."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def _decode_key(text: str, key_id: str, where: str) -> bytes:
    if _B64URL_RE.fullmatch(text) is None:
        raise KeyringError(f"{where}: key {key_id!r} is not URL-safe base64")
    unpadded = text.rstrip("=")
    try:
        key = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        # The original exception can quote the input, so it is not chained.
        raise KeyringError(f"{where}: key {key_id!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(
            f"{where}: key {key_id!r} decodes to {len(key)} bytes; "
            f"AES-256 needs exactly {KEY_BYTES}"
        )
    return key


def parse_keyring(text: str, *, source: str = "VAULT_KEYS") -> Keyring:
    """Parse `key_id:key[,key_id:key...]` (primary first) into a Keyring.

    Whitespace around entries is ignored. Raises KeyringError naming the entry
    position and key id for: an empty list, an empty entry, an entry without
    `:`, an invalid key id, a key that is not URL-safe base64 or not 32 bytes,
    and a duplicate id. `source` names the origin in messages.
    """
    if not text.strip():
        raise KeyringError(f"{source} is empty: at least one key_id:key entry is required")
    keys: list[VaultKey] = []
    seen: set[str] = set()
    for position, raw in enumerate(text.split(","), start=1):
        where = f"{source} entry #{position}"
        entry = raw.strip()
        if not entry:
            raise KeyringError(f"{where} is empty (stray comma?)")
        key_id, sep, key_text = entry.partition(":")
        key_id, key_text = key_id.strip(), key_text.strip()
        if not sep or not key_text:
            # The entry is not quoted: without a ':' it may be a bare key.
            raise KeyringError(f"{where} is malformed: expected key_id:key")
        if not is_valid_key_id(key_id):
            # The id is not quoted either: an invalid "id" may be a key pasted
            # into the wrong place.
            raise KeyringError(f"{where} has an invalid key id: it must match {KEY_ID_PATTERN}")
        if key_id in seen:
            raise KeyringError(f"{where}: duplicate key id {key_id!r}")
        seen.add(key_id)
        keys.append(VaultKey(key_id, _decode_key(key_text, key_id, where)))
    return Keyring(keys)


def generate_key_entry(key_id: str) -> str:
    """A fresh `key_id:key` entry for VAULT_KEYS (32 bytes from the OS CSPRNG)."""
    if not is_valid_key_id(key_id):
        raise KeyringError(f"invalid key id: must match {KEY_ID_PATTERN}")
    return f"{key_id}:{encode_key(secrets.token_bytes(KEY_BYTES))}"


def load_keyring(settings: Settings, *, logger: _WarningLogger | None = None) -> Keyring:
    """The service keyring, from `settings.vault_keys`.

    When VAULT_KEYS is unset (or blank): in production, KeyringError; in
    development, a key file `data_dir/vault.key` is created on first use (mode
    0600, never world-readable) or reused, and a warning is logged.
    """
    log: _WarningLogger = logger if logger is not None else structlog.get_logger()
    configured = settings.vault_keys.get_secret_value() if settings.vault_keys else ""
    if configured.strip():
        return parse_keyring(configured)
    if settings.is_production:
        raise KeyringError(
            "VAULT_KEYS is required in production "
            "(comma-separated key_id:key entries, key = 32 bytes in URL-safe base64)"
        )
    path = settings.data_dir / DEV_KEY_FILE_NAME
    keyring = _load_or_create_dev_key_file(path, log)
    log.warning(
        "VAULT_KEYS is not set: using a development key file; it is not for production",
        path=str(path),
        key_id=keyring.primary.id,
    )
    return keyring


def _load_or_create_dev_key_file(path: Path, log: _WarningLogger) -> Keyring:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            _create_key_file(path, generate_key_entry(DEV_KEY_ID) + "\n")
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyringError(
            f"cannot use the development key file {path}: {exc.strerror or exc}"
        ) from None
    if mode & 0o077:
        log.warning(
            "the development key file is readable by other users; chmod 600 it",
            path=str(path),
            mode=oct(mode),
        )
    return parse_keyring(text, source=str(path))


def _create_key_file(path: Path, content: str) -> None:
    """Write `content` to a new file at `path`, atomically and with mode 0600.

    The file is written under a temporary name and hard-linked into place, so a
    concurrent process never reads a half-written key; whoever links first wins
    and the loser reuses the winner's key. os.open with 0o600 (rather than
    writing then chmod-ing) means the key is never readable by others, even for
    an instant; the umask can only remove bits from 0o600.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        # Losing the race is fine: the existing file is read by the caller.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
