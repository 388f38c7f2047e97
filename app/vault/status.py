"""Which vault keys the stored ciphertexts and lookup hashes use (`integrations vault status`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.vault.envelope import SealedSecret, VaultError, split_lookup_hash
from app.vault.fields import SealedField
from app.vault.keyring import Keyring


@dataclass(frozen=True)
class FieldStatus:
    """Counts for one sealed column; `ciphertexts` and `hashes` are per key id."""

    table: str
    column: str
    hash_column: str | None
    rows: int
    ciphertexts: Mapping[str, int]
    hashes: Mapping[str, int]
    malformed_ciphertexts: int = 0
    malformed_hashes: int = 0

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class VaultStatus:
    """Which key ids the stored ciphertexts and hashes use, against a keyring.

    `ok` is False when a key id in use is missing from the keyring (those
    secrets cannot be opened) or when a stored value is malformed.
    """

    primary_key_id: str
    keyring_key_ids: tuple[str, ...]
    fields: tuple[FieldStatus, ...]

    @property
    def ciphertexts_by_key(self) -> dict[str, int]:
        return dict(sum((Counter(f.ciphertexts) for f in self.fields), Counter()))

    @property
    def hashes_by_key(self) -> dict[str, int]:
        return dict(sum((Counter(f.hashes) for f in self.fields), Counter()))

    @property
    def key_ids_in_use(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.ciphertexts_by_key) | set(self.hashes_by_key)))

    @property
    def missing_key_ids(self) -> tuple[str, ...]:
        """Key ids in use that the keyring does not hold."""
        return tuple(k for k in self.key_ids_in_use if k not in self.keyring_key_ids)

    @property
    def unused_key_ids(self) -> tuple[str, ...]:
        """Non-primary keyring keys that nothing uses: safe to remove."""
        in_use = set(self.key_ids_in_use)
        return tuple(
            k for k in self.keyring_key_ids if k not in in_use and k != self.primary_key_id
        )

    @property
    def pending_rotation(self) -> int:
        """Ciphertexts plus hashes not under the primary key."""
        return sum(
            count
            for counts in (self.ciphertexts_by_key, self.hashes_by_key)
            for key_id, count in counts.items()
            if key_id != self.primary_key_id
        )

    @property
    def malformed(self) -> int:
        return sum(f.malformed_ciphertexts + f.malformed_hashes for f in self.fields)

    @property
    def ok(self) -> bool:
        return not self.missing_key_ids and self.malformed == 0


def raw_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    # Read and compare the stored text as-is: bypasses SealedSecretType, so a
    # malformed value is counted instead of failing the whole query.
    return sa.type_coerce(column, sa.Text)


async def vault_status(
    session_factory: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    fields: Iterable[SealedField],
    *,
    batch_size: int = 1000,
) -> VaultStatus:
    """Count stored ciphertexts and lookup hashes per key id, field by field.

    Streams each table by keyset pagination on its id column (`batch_size`
    rows per query), so memory stays flat whatever the table size (`fields`:
    usually `sealed_fields(metadata.sorted_tables)`). Reads only; decrypts nothing.
    """
    check_batch_size(batch_size)
    results = []
    for sealed_field in fields:
        results.append(await _field_status(session_factory, sealed_field, batch_size))
    return VaultStatus(
        primary_key_id=keyring.primary.id,
        keyring_key_ids=keyring.key_ids,
        fields=tuple(results),
    )


async def _field_status(
    session_factory: async_sessionmaker[AsyncSession], sealed_field: SealedField, batch_size: int
) -> FieldStatus:
    table = sealed_field.table
    id_col = table.c[sealed_field.id_column]
    hash_col = (
        raw_text(table.c[sealed_field.hash_column])
        if sealed_field.hash_column is not None
        else None
    )
    columns: list[sa.ColumnElement[Any]] = [id_col, raw_text(table.c[sealed_field.column])]
    if hash_col is not None:
        columns.append(hash_col)
    rows = 0
    ciphertexts: Counter[str] = Counter()
    hashes: Counter[str] = Counter()
    malformed_ciphertexts = malformed_hashes = 0
    last_id: Any = None
    while True:
        stmt = sa.select(*columns).order_by(id_col).limit(batch_size)
        if last_id is not None:
            stmt = stmt.where(id_col > last_id)
        async with session_factory() as session:
            page = (await session.execute(stmt)).all()
        for row in page:
            rows += 1
            text, stored_hash = row[1], row[2] if hash_col is not None else None
            if text is not None:
                key_id = ciphertext_key_id(text)
                if key_id is None:
                    malformed_ciphertexts += 1
                else:
                    ciphertexts[key_id] += 1
            if stored_hash is not None:
                parts = split_lookup_hash(stored_hash)
                if parts is None:
                    malformed_hashes += 1
                else:
                    hashes[parts[0]] += 1
        if len(page) < batch_size:
            break
        last_id = page[-1][0]
    return FieldStatus(
        table=table.name,
        column=sealed_field.column,
        hash_column=sealed_field.hash_column,
        rows=rows,
        ciphertexts=dict(ciphertexts),
        hashes=dict(hashes),
        malformed_ciphertexts=malformed_ciphertexts,
        malformed_hashes=malformed_hashes,
    )


def ciphertext_key_id(text: str) -> str | None:
    try:
        return SealedSecret(text).key_id
    except (VaultError, TypeError):
        return None


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
