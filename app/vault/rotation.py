"""Online key rotation over every table that holds sealed secrets (`integrations vault rotate`).

Rotation is online: rows are processed in keyset-paginated batches, each in its
own short transaction, and every update is a compare-and-set on the old
ciphertext (and old hash), so a row the application changes meanwhile is
skipped and counted, never overwritten. Rerunning picks such rows up; a run
with nothing left to rotate changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.vault.envelope import (
    FORMAT_VERSION,
    DecryptionError,
    SealedSecret,
    SecretContext,
    UnknownKeyError,
    Vault,
    VaultError,
)
from app.vault.fields import SealedField
from app.vault.status import check_batch_size, ciphertext_key_id, raw_text

_log = structlog.get_logger(__name__)

# How many failing row ids a report keeps per field (the counts are complete).
MAX_FAILED_ROW_IDS = 20


@dataclass(frozen=True)
class RotationProgress:
    """Running totals for the whole run, passed to the callback after each batch."""

    field: str
    batches: int
    examined: int
    rotated: int
    skipped_concurrent: int
    failed: int


@dataclass(frozen=True)
class FieldRotation:
    """The outcome for one sealed column.

    `failures` counts failed rows per reason (reasons name the key id, never a
    value); `failed_row_ids` keeps the first few ids for investigation.
    """

    table: str
    column: str
    examined: int = 0
    rotated: int = 0
    skipped_concurrent: int = 0
    failed: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)
    failed_row_ids: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class RotationReport:
    """What `rotate()` did. `ok` is False when any row failed to rotate."""

    primary_key_id: str
    fields: tuple[FieldRotation, ...]

    @property
    def examined(self) -> int:
        return sum(f.examined for f in self.fields)

    @property
    def rotated(self) -> int:
        return sum(f.rotated for f in self.fields)

    @property
    def skipped_concurrent(self) -> int:
        return sum(f.skipped_concurrent for f in self.fields)

    @property
    def failed(self) -> int:
        return sum(f.failed for f in self.fields)

    @property
    def ok(self) -> bool:
        return self.failed == 0


@dataclass
class _Totals:
    batches: int = 0
    examined: int = 0
    rotated: int = 0
    skipped_concurrent: int = 0
    failed: int = 0

    def add(self, other: _Totals) -> None:
        self.batches += other.batches
        self.examined += other.examined
        self.rotated += other.rotated
        self.skipped_concurrent += other.skipped_concurrent
        self.failed += other.failed

    def progress(self, label: str) -> RotationProgress:
        return RotationProgress(
            field=label,
            batches=self.batches,
            examined=self.examined,
            rotated=self.rotated,
            skipped_concurrent=self.skipped_concurrent,
            failed=self.failed,
        )


async def rotate(
    session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch_size: int = 500,
    progress: Callable[[RotationProgress], None] | None = None,
    fields: Iterable[SealedField],
) -> RotationReport:
    """Re-seal every ciphertext not under the primary key, and re-hash its hash column.

    Candidates are rows whose ciphertext or (non-NULL) hash is not under the
    primary key; NULL ciphertexts are skipped. Each batch of `batch_size` rows
    is one transaction; each row is updated only if its ciphertext and hash
    are still the values read (compare-and-set), else counted as
    `skipped_concurrent`. A row that cannot be opened (unknown key id, failed
    authentication, malformed) is counted as failed with its reason and left
    untouched; the run goes on. `progress` is called after every batch.
    """
    check_batch_size(batch_size)
    totals = _Totals()
    results = []
    for sealed_field in fields:
        results.append(
            await _rotate_field(session_factory, vault, sealed_field, batch_size, progress, totals)
        )
    return RotationReport(primary_key_id=vault.keyring.primary.id, fields=tuple(results))


def _not_prefixed(column: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
    # substr() rather than NOT LIKE: SQLite's LIKE is case-insensitive for ASCII,
    # so with key ids "k1" and "K1" a LIKE filter would skip rows; '_' in key
    # ids would also need escaping. substr and = are portable and exact.
    return sa.func.substr(column, 1, len(prefix)) != prefix


@dataclass(frozen=True)
class _Columns:
    """The columns of one sealed field as rotation reads and compares them (raw text)."""

    id: sa.ColumnElement[Any]
    text: sa.ColumnElement[str]
    hash: sa.ColumnElement[str] | None

    @classmethod
    def of(cls, sealed_field: SealedField) -> _Columns:
        table = sealed_field.table
        hash_name = sealed_field.hash_column
        return cls(
            id=table.c[sealed_field.id_column],
            text=raw_text(table.c[sealed_field.column]),
            hash=raw_text(table.c[hash_name]) if hash_name is not None else None,
        )


def _candidates(sealed_field: SealedField, columns: _Columns, primary: str) -> sa.Select[Any]:
    """Rows whose ciphertext, or non-NULL hash, is not under the primary key."""
    stale = _not_prefixed(columns.text, f"{FORMAT_VERSION}.{primary}.")
    if columns.hash is not None:
        stale = sa.or_(
            stale, sa.and_(columns.hash.is_not(None), _not_prefixed(columns.hash, f"{primary}:"))
        )
    return sa.select(
        columns.id,
        sealed_field.table.c[sealed_field.workspace_column],
        columns.text,
        columns.hash if columns.hash is not None else sa.null(),
    ).where(columns.text.is_not(None), stale)


async def _rotate_field(
    session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
    sealed_field: SealedField,
    batch_size: int,
    progress: Callable[[RotationProgress], None] | None,
    totals: _Totals,
) -> FieldRotation:
    """Rotate one sealed column, a keyset-paginated batch per transaction."""
    columns = _Columns.of(sealed_field)
    candidates = _candidates(sealed_field, columns, vault.keyring.primary.id)
    counts = _Totals()
    failures: Counter[str] = Counter()
    failed_ids: list[str] = []
    last_id: Any = None
    while True:
        stmt = candidates.order_by(columns.id).limit(batch_size)
        if last_id is not None:
            stmt = stmt.where(columns.id > last_id)
        batch = _Totals(batches=1)
        async with session_factory() as session, session.begin():
            page: Sequence[sa.Row[Any]] = (await session.execute(stmt)).all()
            for row in page:
                batch.examined += 1
                outcome = await _rotate_row(session, vault, sealed_field, columns, row)
                if outcome == _ROTATED:
                    batch.rotated += 1
                elif outcome == _SKIPPED:
                    batch.skipped_concurrent += 1
                elif outcome != _UNCHANGED:
                    batch.failed += 1
                    failures[outcome] += 1
                    if len(failed_ids) < MAX_FAILED_ROW_IDS:
                        failed_ids.append(str(row[0]))
        if not page:
            break
        counts.add(batch)
        totals.add(batch)
        if progress is not None:
            progress(totals.progress(sealed_field.label))
        if len(page) < batch_size:
            break
        last_id = page[-1][0]
    return FieldRotation(
        table=sealed_field.table.name,
        column=sealed_field.column,
        examined=counts.examined,
        rotated=counts.rotated,
        skipped_concurrent=counts.skipped_concurrent,
        failed=counts.failed,
        failures=dict(failures),
        failed_row_ids=tuple(failed_ids),
    )


# What `_rotate_row` did; anything else it returns is the reason it failed.
_ROTATED, _SKIPPED, _UNCHANGED = "rotated", "skipped", "unchanged"


async def _rotate_row(
    session: AsyncSession,
    vault: Vault,
    sealed_field: SealedField,
    columns: _Columns,
    row: sa.Row[Any],
) -> str:
    """Re-seal one row by compare-and-set; returns an outcome or a failure reason."""
    row_id, workspace_id, old_text, old_hash = row
    table = sealed_field.table
    try:
        new_text, new_hash = _resealed(
            vault, sealed_field.context(row_id, workspace_id), old_text, old_hash
        )
    except VaultError as exc:
        reason = _failure_reason(exc, old_text)
        _log.warning(
            "vault rotation: secret not rotated",
            table=table.name,
            column=sealed_field.column,
            row_id=str(row_id),
            reason=reason,
        )
        return reason
    if new_text == old_text and new_hash == old_hash:
        return _UNCHANGED
    # Compare-and-set: only if the row still holds what was read.
    update = (
        sa.update(table)
        .where(columns.id == row_id, columns.text == old_text)
        .values({table.c[sealed_field.column]: sa.type_coerce(new_text, sa.Text)})
    )
    if columns.hash is not None and sealed_field.hash_column is not None:
        update = update.where(
            columns.hash.is_(None) if old_hash is None else columns.hash == old_hash
        ).values({table.c[sealed_field.hash_column]: sa.type_coerce(new_hash, sa.Text)})
    # Through the connection: its CursorResult carries the rowcount.
    result = await (await session.connection()).execute(update)
    return _ROTATED if result.rowcount == 1 else _SKIPPED


def _resealed(
    vault: Vault, context: SecretContext, old_text: str, old_hash: str | None
) -> tuple[str, str | None]:
    """The (ciphertext, hash) a row should hold under the primary key."""
    sealed = SealedSecret(old_text)
    plaintext = vault.open(sealed, context)
    new_text = (
        vault.seal(plaintext, context).ciphertext if vault.needs_rotation(sealed) else old_text
    )
    # A NULL hash stays NULL: rotation re-keys data, it does not invent it.
    new_hash = None if old_hash is None else vault.lookup_hash(plaintext)
    return new_text, new_hash


def _failure_reason(exc: VaultError, old_text: str) -> str:
    # Reasons are grouped and counted, so they carry no row-specific detail.
    if isinstance(exc, UnknownKeyError):
        return f"unknown key id {exc.key_id!r} (not in VAULT_KEYS)"
    if isinstance(exc, DecryptionError):
        return (
            f"decryption failed under key id {ciphertext_key_id(old_text)!r} "
            "(tampered, wrong context, or a different key under that id)"
        )
    return str(exc)
