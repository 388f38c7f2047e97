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
    tables = (await connection.execute(_TABLES)).scalars().all()
    if not tables:
        return ""
    # One statement for every table: the dump runs after each test.
    selects = []
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        label = "'" + table.replace("'", "''") + ": '"
        selects.append(f"SELECT {label} || row_to_json(t)::text FROM {quoted} t")
    rows = await connection.execute(text(" UNION ALL ".join(selects)))
    return "\n".join(rows.scalars())
