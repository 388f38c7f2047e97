"""A text dump of a PostgreSQL database, for the leak check.

Each test's tables are emptied when it ends, so a dump at the end of the session
would show nothing: tests/conftest.py dumps before every truncation (and once more
before the database is dropped). Every row of every table in the `public` schema,
as JSON (text columns appear as they are stored; the schema has no binary columns).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_TABLES = text(
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
)


async def dump_database(connection: AsyncConnection) -> str:
    """Every row of every table, one JSON object a line, each under its table's name."""
    lines: list[str] = []
    tables = (await connection.execute(_TABLES)).scalars().all()
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        rows = await connection.execute(text(f"SELECT row_to_json(t)::text FROM {quoted} t"))
        lines.extend(f"{table}: {row}" for row in rows.scalars())
    return "\n".join(lines)
