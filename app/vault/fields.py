"""Which columns hold sealed secrets: found in the tables' metadata, never registered.

A column of `SealedSecretType` is a sealed field; its lookup-hash column, if it
has one, is named in the column's `info` (`lookup_hash_info(...)`). Status and
rotation walk `sealed_fields(metadata.sorted_tables)`, so a sealed column cannot
be left out by a missing import or registration: if the table is in the metadata
(which the migrations test holds against the database), its secrets are rotated.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.vault.column import SealedSecretType
from app.vault.envelope import SecretContext

# The `Column.info` key that names a sealed column's lookup-hash column.
LOOKUP_HASH_INFO_KEY = "vault_lookup_hash_column"


def lookup_hash_info(hash_column: str) -> dict[str, Any]:
    """`info=` for a sealed column whose lookup hash lives in `hash_column`."""
    return {LOOKUP_HASH_INFO_KEY: hash_column}


@dataclass(frozen=True)
class SealedField:
    """A column of sealed secrets, with the columns that make up its context.

    `hash_column`, when set, holds `Vault.lookup_hash()` of the same plaintext
    (NULL is left alone). The SecretContext of a row is `context(row_id, workspace_id)`.
    """

    table: sa.Table
    column: str
    hash_column: str | None = None
    id_column: str = "id"
    workspace_column: str = "workspace_id"

    def __post_init__(self) -> None:
        names = [self.column, self.id_column, self.workspace_column]
        if self.hash_column is not None:
            names.append(self.hash_column)
        for name in names:
            if name not in self.table.c:
                raise ValueError(f"table {self.table.name!r} has no column {name!r}")
        if not isinstance(self.table.c[self.column].type, SealedSecretType):
            raise ValueError(f"{self.label} is not a sealed-secret column")

    @property
    def label(self) -> str:
        return f"{self.table.name}.{self.column}"

    def context(self, row_id: uuid.UUID, workspace_id: uuid.UUID) -> SecretContext:
        """The associated data of this column's ciphertext in one row: the one way to build it.

        Only UUIDs are accepted: a backend or column type that hands back another
        spelling (SQLite's undashed hex for an untyped column) would otherwise seal
        or open with different associated data and fail as "altered" far from the cause.
        """
        for name, value in (("row_id", row_id), ("workspace_id", workspace_id)):
            if not isinstance(value, uuid.UUID):
                raise TypeError(
                    f"{self.label}: {name} must be a uuid.UUID, not {type(value).__name__}"
                )
        return SecretContext(self.table.name, self.column, str(row_id), str(workspace_id))


def sealed_fields(tables: Iterable[sa.Table]) -> tuple[SealedField, ...]:
    """Every sealed-secret column of `tables`, in the order given (then column order)."""
    found = []
    for table in tables:
        for column in table.columns:
            if isinstance(column.type, SealedSecretType):
                found.append(
                    SealedField(
                        table, column.name, hash_column=column.info.get(LOOKUP_HASH_INFO_KEY)
                    )
                )
    return tuple(found)
