"""Shared keys and a throwaway PostgreSQL database for the vault tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.vault import Keyring, Vault, VaultKey
from tests.conftest import dump_for_leak_check

PG_ADMIN_DSN = os.environ.get(
    "VAULT_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def key_a() -> VaultKey:
    return VaultKey("kA", secrets.token_bytes(32))


@pytest.fixture(scope="session")
def key_b() -> VaultKey:
    return VaultKey("kB", secrets.token_bytes(32))


@pytest.fixture(scope="session")
def vault_a(key_a: VaultKey) -> Vault:
    return Vault(Keyring([key_a]))


@pytest.fixture(scope="session")
def vault_b(key_b: VaultKey) -> Vault:
    return Vault(Keyring([key_b]))


@pytest.fixture(scope="session")
def vault_ba(key_a: VaultKey, key_b: VaultKey) -> Vault:
    """Mid-rotation: B is the new primary, A is kept to open old ciphertexts."""
    return Vault(Keyring([key_b, key_a]))


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """A database of our own for this test session, dropped afterwards."""
    name = f"vault_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    host_part = PG_ADMIN_DSN.removeprefix("postgresql://").rsplit("/", 1)[0]
    url = f"postgresql+asyncpg://{host_part}/{name}"
    yield url
    await dump_for_leak_check(url)
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        # FORCE: a test that failed half-way may have left a connection open.
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()
