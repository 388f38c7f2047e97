"""Column types are explicit: every backend hands the code the same Python values.

A foreign key declared without a type takes its type from the referenced column,
but only once that table is in the metadata. A process that imports one model
module alone (the worker imports no workspace model) then sees `NullType`, and
SQLite hands back the stored hex text instead of a UUID: the polling worker built
different associated data than the API had sealed the token with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
# Every domain's models module, found rather than listed, so a new domain is covered too.
MODEL_MODULES = sorted(
    ".".join(path.relative_to(APP.parent).with_suffix("").parts) for path in APP.rglob("models.py")
)

_REPORT = """
import json, sys, importlib
from sqlalchemy import Uuid
from sqlalchemy.types import NullType
module = importlib.import_module(sys.argv[1])
from app.db import Base
found = []
for table in Base.metadata.tables.values():
    for column in table.columns:
        if isinstance(column.type, NullType):
            found.append(f"{table.name}.{column.name}: untyped")
        elif column.foreign_keys and not isinstance(column.type, Uuid):
            found.append(f"{table.name}.{column.name}: {column.type!r}")
print(json.dumps(found))
"""


def test_the_model_modules_are_found() -> None:
    assert "app.connections.models" in MODEL_MODULES


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_every_column_is_typed_when_its_module_is_imported_alone(module: str) -> None:
    # A fresh interpreter: this test process has every model imported already.
    result = subprocess.run(
        [sys.executable, "-c", _REPORT, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == []
