"""Applying the alembic migrations from code (the CLI and the tests use this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None, *, pgbouncer: bool | None = None) -> Config:
    """The project's alembic configuration; `url` overrides the settings' database,
    `pgbouncer` their `DATABASE_PGBOUNCER`."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    if pgbouncer is not None:
        config.attributes["pgbouncer"] = pgbouncer
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    if url is not None:
        # ConfigParser interpolation treats '%' specially; URLs may contain it.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str | None = None, *, pgbouncer: bool | None = None) -> None:
    """Run every pending migration. Synchronous: call it outside an event loop."""
    command.upgrade(alembic_config(url, pgbouncer=pgbouncer), "head")
