"""The SQLAlchemy column type for sealed secrets.

A column of this type only accepts SealedSecret values, so a plaintext token
cannot be written to it by mistake: binding a str fails before any SQL is sent.
Lookup hashes need no special type; they are plain String(100) columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import Text, TypeDecorator

from app.vault.envelope import SealedSecret


class SealedSecretType(TypeDecorator[SealedSecret]):
    """TEXT in the database, SealedSecret in Python (None stays None).

    Binding anything but a SealedSecret (notably a plain str) raises TypeError,
    including in comparisons such as `column == "..."`. Loading a value that is
    not a well-formed ciphertext raises VaultError.
    """

    impl = Text
    cache_ok = True

    @property
    def python_type(self) -> type[SealedSecret]:
        return SealedSecret

    def process_bind_param(self, value: object, dialect: Dialect) -> str | None:
        return _to_text(value)

    def process_literal_param(self, value: object, dialect: Dialect) -> str:
        text = _to_text(value)
        if text is None:
            return "NULL"
        # The ciphertext alphabet (letters, digits, '.', '-', '_') needs no
        # escaping, but quote defensively in case the format ever grows.
        return "'" + text.replace("'", "''") + "'"

    def process_result_value(self, value: Any | None, dialect: Dialect) -> SealedSecret | None:
        if value is None:
            return None
        return SealedSecret(value)


def _to_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, SealedSecret):
        return value.ciphertext
    # The value itself is never quoted: it may be the plaintext secret.
    raise TypeError(
        f"a sealed-secret column accepts SealedSecret values, not {type(value).__name__}: "
        "secrets must be sealed with the vault first (Vault.seal)"
    )
