"""SealedSecretType on real PostgreSQL: only sealed values go in, sealed values come out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from app.vault import SealedSecret, SealedSecretType, SecretContext, Vault, VaultError

PLAINTEXT = "987654:AAH-column-test-token"
PG_DIALECT = PGDialect()  # type: ignore[no-untyped-call]


class Base(MappedAsDataclass, DeclarativeBase):
    pass


class Credential(Base):
    """Dataclass mapping: its generated repr includes every field, the secret too."""

    __tablename__ = "vault_column_credentials"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    token: Mapped[SealedSecret | None] = mapped_column(SealedSecretType)


table = cast(sa.Table, Credential.__table__)


def context(row_id: uuid.UUID, workspace_id: uuid.UUID) -> SecretContext:
    return SecretContext("vault_column_credentials", "token", str(row_id), str(workspace_id))


@pytest.fixture
async def engine(pg_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with pg_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield pg_engine
    finally:
        async with pg_engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)


def test_bind_refuses_plain_strings() -> None:
    column_type = SealedSecretType()
    dialect = PG_DIALECT
    with pytest.raises(TypeError, match="secrets must be sealed with the vault first") as info:
        column_type.process_bind_param(PLAINTEXT, dialect)
    assert PLAINTEXT not in str(info.value)
    for other in (b"bytes", 42, object()):
        with pytest.raises(TypeError):
            column_type.process_bind_param(other, dialect)
    assert column_type.process_bind_param(None, dialect) is None


def test_literal_rendering_also_refuses_plain_strings() -> None:
    stmt = sa.select(table.c.id).where(table.c.token == PLAINTEXT)
    # SQLAlchemy wraps the TypeError raised by the literal processor.
    with pytest.raises(sa.exc.CompileError) as info:
        stmt.compile(dialect=PG_DIALECT, compile_kwargs={"literal_binds": True})
    assert isinstance(info.value.__cause__, TypeError)
    assert "sealed with the vault first" in str(info.value.__cause__)


async def test_insert_of_a_str_fails_before_reaching_the_database(engine: AsyncEngine) -> None:
    row_id, ws = uuid.uuid4(), uuid.uuid4()
    async with engine.connect() as conn:
        with pytest.raises(sa.exc.StatementError) as info:
            await conn.execute(table.insert().values(id=row_id, workspace_id=ws, token=PLAINTEXT))
        assert isinstance(info.value.orig, TypeError)
        assert "sealed with the vault first" in str(info.value.orig)
        await conn.rollback()
        count = await conn.scalar(sa.select(sa.func.count()).select_from(table))
    assert count == 0


async def test_comparing_with_a_str_fails(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(sa.exc.StatementError) as info:
            await conn.execute(sa.select(table.c.id).where(table.c.token == PLAINTEXT))
    assert isinstance(info.value.orig, TypeError)


async def test_orm_round_trip_and_reprs(engine: AsyncEngine, vault_a: Vault) -> None:
    row_id, ws = uuid.uuid4(), uuid.uuid4()
    sealed = vault_a.seal(PLAINTEXT, context(row_id, ws))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        session.add(Credential(id=row_id, workspace_id=ws, token=sealed))
        session.add(Credential(id=uuid.uuid4(), workspace_id=ws, token=None))

    async with sessions() as session:
        loaded = await session.get(Credential, row_id)
        row = (await session.execute(sa.select(table).where(table.c.id == row_id))).one()
        nulls = (
            await session.execute(sa.select(table.c.token).where(table.c.token.is_(None)))
        ).all()
        raw = await session.scalar(sa.select(sa.type_coerce(table.c.token, sa.Text)))
    assert loaded is not None
    assert isinstance(loaded.token, SealedSecret)
    assert loaded.token == sealed
    assert vault_a.open(loaded.token, context(row_id, ws)) == PLAINTEXT
    assert isinstance(row.token, SealedSecret)
    assert [tuple(r) for r in nulls] == [(None,)]
    # The database holds exactly the ciphertext text, nothing else.
    assert raw == sealed.ciphertext

    payload = sealed.ciphertext.rsplit(".", 1)[1]
    for shown in (repr(loaded), str(loaded), repr(row), str(row), repr(row._mapping)):
        # The representations do include the token field, as SealedSecret(***).
        assert "SealedSecret(***)" in shown
        assert PLAINTEXT not in shown
        assert payload not in shown
        assert sealed.ciphertext not in shown


async def test_loading_a_malformed_value_raises_vault_error(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(table).values(
                id=uuid.uuid4(),
                workspace_id=uuid.uuid4(),
                token=sa.type_coerce("plaintext-smuggled-in", sa.Text),
            )
        )
    async with engine.connect() as conn:
        with pytest.raises(VaultError, match="malformed"):
            (await conn.execute(sa.select(table.c.token))).all()
