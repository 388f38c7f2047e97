"""vault_status() and rotate() against real databases (PostgreSQL, and SQLite once)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.vault import (
    Keyring,
    RotationProgress,
    SealedField,
    SealedSecret,
    SealedSecretType,
    Vault,
    VaultKey,
    lookup_hash_info,
    rotate,
    rotation_lines,
    sealed_fields,
    status_lines,
    vault_status,
)

metadata = sa.MetaData()
secrets_table = sa.Table(
    "vault_rotation_secrets",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("workspace_id", sa.Uuid, nullable=False),
    sa.Column("token", SealedSecretType, nullable=True, info=lookup_hash_info("token_hash")),
    sa.Column("token_hash", sa.String(100), nullable=True),
)
FIELD = SealedField(secrets_table, "token", hash_column="token_hash")

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Stored:
    id: uuid.UUID
    workspace_id: uuid.UUID
    plaintext: str


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)


@pytest.fixture
async def pg(pg_engine: AsyncEngine) -> AsyncIterator[Sessions]:
    await create_schema(pg_engine)
    try:
        yield async_sessionmaker(pg_engine, expire_on_commit=False)
    finally:
        async with pg_engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)


async def insert_rows(
    sessions: Sessions,
    vault: Vault,
    count: int,
    *,
    prefix: str = "secret",
) -> list[Stored]:
    stored = []
    async with sessions() as session, session.begin():
        for index in range(count):
            row = Stored(uuid.uuid4(), uuid.uuid4(), f"{prefix}-{index}-ключ")
            await session.execute(
                secrets_table.insert().values(
                    id=row.id,
                    workspace_id=row.workspace_id,
                    token=vault.seal(row.plaintext, FIELD.context(row.id, row.workspace_id)),
                    token_hash=vault.lookup_hash(row.plaintext),
                )
            )
            stored.append(row)
    return stored


async def load_all(
    sessions: Sessions,
) -> dict[uuid.UUID, tuple[SealedSecret | None, str | None]]:
    async with sessions() as session:
        result = await session.execute(
            sa.select(secrets_table.c.id, secrets_table.c.token, secrets_table.c.token_hash)
        )
        return {row.id: (row.token, row.token_hash) for row in result}


async def assert_all_under(
    sessions: Sessions,
    vault: Vault,
    rows: list[Stored],
) -> None:
    """Every row opens with `vault` alone, under its primary key, hash included."""
    loaded = await load_all(sessions)
    primary = vault.keyring.primary.id
    for row in rows:
        token, token_hash = loaded[row.id]
        assert token is not None and token_hash is not None
        assert token.key_id == primary
        assert vault.open(token, FIELD.context(row.id, row.workspace_id)) == row.plaintext
        assert token_hash.startswith(f"{primary}:")
        assert token_hash == vault.lookup_hash(row.plaintext)
        assert vault.matches(row.plaintext, token_hash)


async def test_full_rotation_on_postgresql(
    pg: Sessions,
    vault_a: Vault,
    vault_b: Vault,
    vault_ba: Vault,
) -> None:
    rows = await insert_rows(pg, vault_a, 23)
    null_id = uuid.uuid4()
    async with pg() as session, session.begin():
        await session.execute(
            secrets_table.insert().values(id=null_id, workspace_id=uuid.uuid4(), token=None)
        )

    # Before rotation, a keyring without A cannot open what is stored.
    before = await vault_status(pg, vault_b.keyring, [FIELD], batch_size=4)
    assert before.missing_key_ids == ("kA",)
    assert not before.ok
    assert any("MISSING" in line and "kA" in line for line in status_lines(before))
    assert status_lines(before)[-1] == "status: PROBLEM"

    during = await vault_status(pg, vault_ba.keyring, [FIELD], batch_size=4)
    assert during.ok
    assert during.ciphertexts_by_key == {"kA": 23}
    assert during.hashes_by_key == {"kA": 23}
    assert during.key_ids_in_use == ("kA",)
    assert during.pending_rotation == 46
    assert during.fields[0].rows == 24
    assert status_lines(during)[-1] == "status: OK"

    progress: list[RotationProgress] = []
    report = await rotate(pg, vault_ba, batch_size=5, progress=progress.append, fields=[FIELD])
    assert (report.examined, report.rotated, report.skipped_concurrent, report.failed) == (
        23,
        23,
        0,
        0,
    )
    assert report.ok
    assert [p.batches for p in progress] == [1, 2, 3, 4, 5]
    assert [p.examined for p in progress] == [5, 10, 15, 20, 23]
    assert progress[-1].rotated == 23
    assert progress[-1].field == "vault_rotation_secrets.token"
    assert "status: OK" in rotation_lines(report)

    await assert_all_under(pg, vault_b, rows)
    assert (await load_all(pg))[null_id] == (None, None)

    after = await vault_status(pg, vault_b.keyring, [FIELD])
    assert after.ok
    assert after.ciphertexts_by_key == {"kB": 23}
    assert after.hashes_by_key == {"kB": 23}
    assert after.missing_key_ids == ()
    assert after.pending_rotation == 0
    # With A still in the keyring, status says it may now be removed.
    assert (await vault_status(pg, vault_ba.keyring, [FIELD])).unused_key_ids == ("kA",)

    again = await rotate(pg, vault_ba, batch_size=5, fields=[FIELD])
    assert (again.examined, again.rotated, again.failed) == (0, 0, 0)
    await assert_all_under(pg, vault_b, rows)


async def test_stale_hash_alone_is_rotated(
    pg: Sessions,
    vault_a: Vault,
    vault_b: Vault,
    vault_ba: Vault,
) -> None:
    # Ciphertext already under B, hash still under A (e.g. written mid-deploy).
    row = (await insert_rows(pg, vault_b, 1))[0]
    async with pg() as session, session.begin():
        await session.execute(
            secrets_table.update().values(token_hash=vault_a.lookup_hash(row.plaintext))
        )
    old_token = (await load_all(pg))[row.id][0]

    report = await rotate(pg, vault_ba, fields=[FIELD])
    assert (report.examined, report.rotated) == (1, 1)
    token, token_hash = (await load_all(pg))[row.id]
    assert token == old_token  # the ciphertext was fine and is kept as is
    assert token_hash == vault_b.lookup_hash(row.plaintext)


async def test_failures_are_reported_and_the_run_continues(
    pg: Sessions,
    vault_a: Vault,
    vault_b: Vault,
    vault_ba: Vault,
) -> None:
    good = await insert_rows(pg, vault_a, 3)
    lost_key = Vault(Keyring([VaultKey("lost_1", bytes(32))]))
    lost = await insert_rows(pg, lost_key, 2, prefix="lost")
    # A ciphertext copied onto another row: authenticated for the wrong context.
    moved = await insert_rows(pg, vault_a, 1, prefix="moved")
    async with pg() as session, session.begin():
        await session.execute(
            secrets_table.update()
            .where(secrets_table.c.id == moved[0].id)
            .values(token=(await load_all(pg))[good[0].id][0])
        )

    status = await vault_status(pg, vault_ba.keyring, [FIELD])
    assert status.missing_key_ids == ("lost_1",)
    assert not status.ok

    report = await rotate(pg, vault_ba, batch_size=2, fields=[FIELD])
    assert (report.examined, report.rotated, report.failed) == (6, 3, 3)
    assert not report.ok
    failures = report.fields[0].failures
    assert failures["unknown key id 'lost_1' (not in VAULT_KEYS)"] == 2
    assert sum(failures.values()) == 3
    assert any(reason.startswith("decryption failed under key id 'kA'") for reason in failures)
    assert set(report.fields[0].failed_row_ids) == {str(r.id) for r in [*lost, *moved]}
    summary = "\n".join(rotation_lines(report))
    assert "lost_1" in summary and "FAILURES" in summary

    await assert_all_under(pg, vault_b, good)
    loaded = await load_all(pg)
    for row in lost:
        token = loaded[row.id][0]
        assert token is not None and token.key_id == "lost_1"  # left untouched


async def wait_for_lock_waiter(engine: AsyncEngine, within: float = 10.0) -> None:
    """Until some session of this database waits on a row lock."""
    deadline = time.monotonic() + within
    async with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            await conn.rollback()
            if waiting:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("rotate() never blocked on the row lock")


@pytest.mark.parametrize("same_plaintext", [False, True], ids=["new-secret", "resealed"])
async def test_concurrent_change_is_skipped_not_overwritten(
    pg: Sessions,
    pg_engine: AsyncEngine,
    vault_a: Vault,
    vault_b: Vault,
    vault_ba: Vault,
    same_plaintext: bool,
) -> None:
    """The application rewrites a row while rotate() holds its old value.

    Deterministic: the application's transaction locks the row first, so
    rotate() reads the old committed value, then blocks in its compare-and-set
    UPDATE; the application commits, and PostgreSQL re-checks the WHERE clause
    against the new row version, which no longer matches. With the same
    plaintext resealed the hash is unchanged, so only the ciphertext
    comparison can catch the change.
    """
    row, other = await insert_rows(pg, vault_a, 2)
    ctx = FIELD.context(row.id, row.workspace_id)
    new_plaintext = row.plaintext if same_plaintext else "rewritten-by-the-app"
    # Still under A: as from an app instance not yet given key B.
    app_token = vault_a.seal(new_plaintext, ctx)

    async with pg_engine.connect() as app_conn:
        await app_conn.begin()
        await app_conn.execute(
            secrets_table.update()
            .where(secrets_table.c.id == row.id)
            .values(token=app_token, token_hash=vault_a.lookup_hash(new_plaintext))
        )
        task = asyncio.create_task(rotate(pg, vault_ba, fields=[FIELD]))
        await wait_for_lock_waiter(pg_engine)
        assert not task.done()
        await app_conn.commit()
        report = await asyncio.wait_for(task, timeout=10)

    assert (report.examined, report.rotated, report.skipped_concurrent) == (2, 1, 1)
    assert any("run rotate again" in line for line in rotation_lines(report))
    token, _ = (await load_all(pg))[row.id]
    assert token == app_token  # the app's write survived, byte for byte

    rerun = await rotate(pg, vault_ba, fields=[FIELD])
    assert (rerun.examined, rerun.rotated, rerun.skipped_concurrent) == (1, 1, 0)
    await assert_all_under(pg, vault_b, [Stored(row.id, row.workspace_id, new_plaintext), other])


async def test_rotation_on_sqlite(
    tmp_path: Path, vault_a: Vault, vault_b: Vault, vault_ba: Vault
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}")
    try:
        await create_schema(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        rows = await insert_rows(sessions, vault_a, 7)

        assert not (await vault_status(sessions, vault_b.keyring, [FIELD])).ok
        report = await rotate(sessions, vault_ba, batch_size=3, fields=[FIELD])
        assert (report.examined, report.rotated, report.failed) == (7, 7, 0)
        await assert_all_under(sessions, vault_b, rows)
        status = await vault_status(sessions, vault_b.keyring, [FIELD], batch_size=3)
        assert status.ok and status.ciphertexts_by_key == {"kB": 7}
        assert (await rotate(sessions, vault_ba, fields=[FIELD])).rotated == 0
    finally:
        await engine.dispose()


async def test_sqlite_like_case_insensitivity_does_not_hide_rows(
    tmp_path: Path, vault_b: Vault
) -> None:
    """Key ids are case-sensitive even where LIKE is not (SQLite)."""
    upper = Vault(Keyring([VaultKey("KB", bytes(range(32)))]))
    both = Vault(Keyring([*vault_b.keyring, *upper.keyring]))
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'case.db'}")
    try:
        await create_schema(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        rows = await insert_rows(sessions, upper, 2)
        report = await rotate(sessions, both, fields=[FIELD])
        assert report.rotated == 2
        await assert_all_under(sessions, vault_b, rows)
    finally:
        await engine.dispose()


def test_sealed_fields_are_found_from_the_tables_with_their_hash_columns() -> None:
    assert sealed_fields([secrets_table]) == (FIELD,)
    plain = sa.Table("vault_plain", sa.MetaData(), sa.Column("id", sa.Uuid, primary_key=True))
    assert sealed_fields([plain]) == ()


def test_every_sealed_column_of_the_service_is_rotated() -> None:
    """Found by type, not registered: no sealed column can be left out of rotation."""
    from app.models import metadata as service_metadata

    labels = {f.label for f in sealed_fields(service_metadata.sorted_tables)}
    sealed_columns = {
        f"{table.name}.{column.name}"
        for table in service_metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, SealedSecretType)
    }
    assert labels == sealed_columns
    assert "telegram_connections.bot_token" in labels
    hashes = {f.label: f.hash_column for f in sealed_fields(service_metadata.sorted_tables)}
    assert hashes["telegram_connections.webhook_key"] == "webhook_key_hash"


def test_sealed_field_checks_columns() -> None:
    with pytest.raises(ValueError, match="no column 'nope'"):
        SealedField(secrets_table, "token", hash_column="nope")
    with pytest.raises(ValueError, match="no column 'tenant_id'"):
        SealedField(secrets_table, "token", workspace_column="tenant_id")
    with pytest.raises(ValueError, match="not a sealed-secret column"):
        SealedField(secrets_table, "token_hash")


async def test_batch_size_must_be_positive(
    pg: Sessions,
    vault_ba: Vault,
) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        await rotate(pg, vault_ba, batch_size=0, fields=[FIELD])


def test_a_context_is_built_from_uuids_only() -> None:
    """The undashed hex an untyped SQLite column hands back must fail loudly here, not
    later as a ciphertext that "belongs to another row"."""
    row_id, workspace_id = uuid.uuid4(), uuid.uuid4()
    context = FIELD.context(row_id, workspace_id)
    assert (context.row_id, context.workspace_id) == (str(row_id), str(workspace_id))
    with pytest.raises(TypeError, match=r"workspace_id must be a uuid\.UUID"):
        FIELD.context(row_id, workspace_id.hex)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"row_id must be a uuid\.UUID"):
        FIELD.context(str(row_id), workspace_id)  # type: ignore[arg-type]
