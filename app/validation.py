"""What request bodies accept: strict JSON types, and text the database can store.

FastAPI validates a body from the decoded JSON (Python objects), where pydantic's
lax mode would turn `true`, `"25"` and `7.0` into the integers 1, 25 and 7.
Request models derive from `RequestModel`, which is strict: an integer must be a
JSON integer, a string a JSON string. A field whose JSON form is a string but
whose Python type is not (an enum, a UUID, a time) says so with `FromString`.

PostgreSQL cannot store a NUL character in a text column, and no UTF-8 encoding
exists for a lone surrogate (JSON's `"\\ud800"` decodes to one, and so does a
command-line argument that is not UTF-8); SQLite would store the first silently.
`Name` refuses both, and every other control character, so such text is refused
the same way on both backends: a 422 naming the field, before any other work.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, StringConstraints
from pydantic_core import PydanticCustomError

# C0 and C1 control characters, DEL, and surrogates (never valid on their own).
_NOT_IN_A_NAME = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

FromString = Strict(False)


def check_name(value: str) -> str:
    """A name is one line of text: no control characters (NUL included)."""
    if _NOT_IN_A_NAME.search(value):
        raise PydanticCustomError(
            "control_characters", "must be one line of text without control characters"
        )
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(check_name)]


class RequestModel(BaseModel):
    """The base of every request body: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")
