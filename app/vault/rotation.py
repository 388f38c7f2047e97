"""Key status and online key rotation over every table that holds sealed secrets.

Model modules declare their sealed columns with `register_sealed_field(...)` at
import; `vault_status()` and `rotate()` then walk those tables generically.

Rotation is online: rows are processed in keyset-paginated batches, each in its
own short transaction, and every update is a compare-and-set on the old
ciphertext (and old hash), so a row the application changes meanwhile is
skipped and counted, never overwritten. Rerunning picks such rows up; a run
with nothing left to rotate changes nothing.
"""

from __future__ import annotations

import uuid
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
    split_lookup_hash,
)
from app.vault.keyring import Keyring

_log = structlog.get_logger(__name__)

# How many failing row ids a report keeps per field (the counts are complete).
MAX_FAILED_ROW_IDS = 20


@dataclass(frozen=True)
class SealedField:
    """A column of sealed secrets, with the columns that make up its context.

    `hash_column`, when set, holds `Vault.lookup_hash()` of the same plaintext
    (NULL is left alone). The SecretContext of a row is
    `SecretContext(table.name, column, str(row_id), str(workspace_id))`.
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


_registry: list[SealedField] = []


def register_sealed_field(sealed_field: SealedField) -> SealedField:
    """Declare a sealed column for status and rotation; returns it unchanged.

    Registering an equal field again is a no-op; registering a different field
    for an already registered table.column raises ValueError.
    """
    for existing in _registry:
        if existing == sealed_field:
            return sealed_field
        if existing.label == sealed_field.label:
            raise ValueError(f"{sealed_field.label} is already registered differently")
    _registry.append(sealed_field)
    return sealed_field


def sealed_fields() -> tuple[SealedField, ...]:
    """All registered sealed columns, in registration order."""
    return tuple(_registry)


# -- status -----------------------------------------------------------------


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

    def lines(self) -> list[str]:
        """A human-readable summary, one line per string."""
        out = [
            f"primary key: {self.primary_key_id} (keyring: {', '.join(self.keyring_key_ids)})",
        ]
        if not self.fields:
            out.append("no sealed columns registered")
        for f in self.fields:
            line = f"{f.label}: {f.rows} rows; ciphertexts {_format_counts(f.ciphertexts)}"
            if f.hash_column is not None:
                line += f"; hashes ({f.hash_column}) {_format_counts(f.hashes)}"
            if f.malformed_ciphertexts or f.malformed_hashes:
                line += (
                    f"; MALFORMED: {f.malformed_ciphertexts} ciphertexts, "
                    f"{f.malformed_hashes} hashes"
                )
            out.append(line)
        out.append(f"pending rotation: {self.pending_rotation} values not under the primary key")
        if self.missing_key_ids:
            out.append(
                "MISSING keys (in use, not in VAULT_KEYS): " + ", ".join(self.missing_key_ids)
            )
        if self.unused_key_ids:
            out.append(
                "unused keys (can be removed from VAULT_KEYS): " + ", ".join(self.unused_key_ids)
            )
        out.append("status: OK" if self.ok else "status: PROBLEM")
        return out


def _format_counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none"
    return " ".join(f"{key_id}={counts[key_id]}" for key_id in sorted(counts))


def _raw(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    # Read and compare the stored text as-is: bypasses SealedSecretType, so a
    # malformed value is counted instead of failing the whole query.
    return sa.type_coerce(column, sa.Text)


async def vault_status(
    session_factory: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    fields: Iterable[SealedField] | None = None,
    *,
    batch_size: int = 1000,
) -> VaultStatus:
    """Count stored ciphertexts and lookup hashes per key id, field by field.

    Streams each table by keyset pagination on its id column (`batch_size`
    rows per query), so memory stays flat whatever the table size. `fields`
    defaults to every registered field. Reads only; decrypts nothing.
    """
    _check_batch_size(batch_size)
    results = []
    for sealed_field in sealed_fields() if fields is None else tuple(fields):
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
        _raw(table.c[sealed_field.hash_column]) if sealed_field.hash_column is not None else None
    )
    columns: list[sa.ColumnElement[Any]] = [id_col, _raw(table.c[sealed_field.column])]
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
                key_id = _ciphertext_key_id(text)
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


def _ciphertext_key_id(text: str) -> str | None:
    try:
        return SealedSecret(text).key_id
    except (VaultError, TypeError):
        return None


# -- rotation ---------------------------------------------------------------


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

    def lines(self) -> list[str]:
        """A human-readable summary, one line per string."""
        out = [f"rotating to primary key: {self.primary_key_id}"]
        for f in self.fields:
            out.append(
                f"{f.label}: examined {f.examined}, rotated {f.rotated}, "
                f"skipped (changed concurrently) {f.skipped_concurrent}, failed {f.failed}"
            )
            for reason, count in sorted(f.failures.items()):
                out.append(f"  failed: {count} x {reason}")
            if f.failed_row_ids:
                out.append("  failed row ids (first): " + ", ".join(f.failed_row_ids))
        out.append(
            f"total: examined {self.examined}, rotated {self.rotated}, "
            f"skipped {self.skipped_concurrent}, failed {self.failed}"
        )
        if self.skipped_concurrent:
            out.append("rows changed during the run were skipped: run rotate again")
        out.append("status: OK" if self.ok else "status: FAILURES (see above)")
        return out


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


async def rotate(
    session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch_size: int = 500,
    progress: Callable[[RotationProgress], None] | None = None,
    fields: Iterable[SealedField] | None = None,
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
    _check_batch_size(batch_size)
    totals = _Totals()
    results = []
    for sealed_field in sealed_fields() if fields is None else tuple(fields):
        results.append(
            await _rotate_field(session_factory, vault, sealed_field, batch_size, progress, totals)
        )
    return RotationReport(primary_key_id=vault.keyring.primary.id, fields=tuple(results))


def _not_prefixed(column: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
    # substr() rather than NOT LIKE: SQLite's LIKE is case-insensitive for ASCII,
    # so with key ids "k1" and "K1" a LIKE filter would skip rows; '_' in key
    # ids would also need escaping. substr and = are portable and exact.
    return sa.func.substr(column, 1, len(prefix)) != prefix


async def _rotate_field(
    session_factory: async_sessionmaker[AsyncSession],
    vault: Vault,
    sealed_field: SealedField,
    batch_size: int,
    progress: Callable[[RotationProgress], None] | None,
    totals: _Totals,
) -> FieldRotation:
    table = sealed_field.table
    primary = vault.keyring.primary.id
    id_col = table.c[sealed_field.id_column]
    text_col = _raw(table.c[sealed_field.column])
    hash_col = (
        _raw(table.c[sealed_field.hash_column]) if sealed_field.hash_column is not None else None
    )

    stale = _not_prefixed(text_col, f"{FORMAT_VERSION}.{primary}.")
    if hash_col is not None:
        stale = sa.or_(
            stale, sa.and_(hash_col.is_not(None), _not_prefixed(hash_col, f"{primary}:"))
        )
    candidates = sa.select(
        id_col,
        table.c[sealed_field.workspace_column],
        text_col,
        hash_col if hash_col is not None else sa.null(),
    ).where(text_col.is_not(None), stale)

    counts = _Totals()
    failures: Counter[str] = Counter()
    failed_ids: list[str] = []
    last_id: Any = None
    while True:
        stmt = candidates.order_by(id_col).limit(batch_size)
        if last_id is not None:
            stmt = stmt.where(id_col > last_id)
        batch = _Totals(batches=1)
        async with session_factory() as session, session.begin():
            page: Sequence[sa.Row[Any]] = (await session.execute(stmt)).all()
            for row_id, workspace_id, old_text, old_hash in page:
                batch.examined += 1
                context = sealed_field.context(row_id, workspace_id)
                try:
                    new_text, new_hash = _resealed(vault, context, old_text, old_hash)
                except VaultError as exc:
                    reason = _failure_reason(exc, old_text)
                    batch.failed += 1
                    failures[reason] += 1
                    if len(failed_ids) < MAX_FAILED_ROW_IDS:
                        failed_ids.append(str(row_id))
                    _log.warning(
                        "vault rotation: secret not rotated",
                        table=table.name,
                        column=sealed_field.column,
                        row_id=str(row_id),
                        reason=reason,
                    )
                    continue
                if new_text == old_text and new_hash == old_hash:
                    continue
                # Compare-and-set: only if the row still holds what was read.
                update = (
                    sa.update(table)
                    .where(id_col == row_id, text_col == old_text)
                    .values({table.c[sealed_field.column]: sa.type_coerce(new_text, sa.Text)})
                )
                if hash_col is not None and sealed_field.hash_column is not None:
                    update = update.where(
                        hash_col.is_(None) if old_hash is None else hash_col == old_hash
                    ).values({table.c[sealed_field.hash_column]: sa.type_coerce(new_hash, sa.Text)})
                # Through the connection: its CursorResult carries the rowcount.
                result = await (await session.connection()).execute(update)
                if result.rowcount == 1:
                    batch.rotated += 1
                else:
                    batch.skipped_concurrent += 1
        if not page:
            break
        counts.add(batch)
        totals.add(batch)
        if progress is not None:
            progress(
                RotationProgress(
                    field=sealed_field.label,
                    batches=totals.batches,
                    examined=totals.examined,
                    rotated=totals.rotated,
                    skipped_concurrent=totals.skipped_concurrent,
                    failed=totals.failed,
                )
            )
        if len(page) < batch_size:
            break
        last_id = page[-1][0]
    return FieldRotation(
        table=table.name,
        column=sealed_field.column,
        examined=counts.examined,
        rotated=counts.rotated,
        skipped_concurrent=counts.skipped_concurrent,
        failed=counts.failed,
        failures=dict(failures),
        failed_row_ids=tuple(failed_ids),
    )


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
            f"decryption failed under key id {_ciphertext_key_id(old_text)!r} "
            "(tampered, wrong context, or a different key under that id)"
        )
    return str(exc)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
