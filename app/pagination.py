"""Cursor pagination shared by every list endpoint.

Lists answer `{"items": [...], "next_cursor": "..." | null}`. The cursor is an
opaque, URL-safe encoding of the last item's sort key (a position plus the id as
a tie-breaker), so pages stay stable while new rows arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import ValidationFailed

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class PageParams:
    """`?cursor=&limit=` query parameters (limit 1-200, default 50)."""

    def __init__(
        self,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    ) -> None:
        self.cursor = cursor
        self.limit = limit


def encode_cursor(position: datetime | int, row_id: uuid.UUID) -> str:
    value: Any = position.isoformat() if isinstance(position, datetime) else position
    raw = json.dumps([value, str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, kind: type[datetime] | type[int]) -> tuple[Any, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position: Any
        if kind is datetime:
            position = datetime.fromisoformat(value)
            if position.tzinfo is None:
                raise ValueError("cursor time without a time zone")
            position = position.astimezone(UTC)
        else:
            position = int(value)
        return position, uuid.UUID(row_id)
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise ValidationFailed("cursor: not a cursor this API issued", field="cursor") from exc


def keyset(
    stmt: Select[Any],
    position_column: InstrumentedAttribute[Any],
    id_column: InstrumentedAttribute[Any],
    params: PageParams,
    *,
    descending: bool,
    kind: type[datetime] | type[int] = datetime,
) -> Select[Any]:
    """Order `stmt` by (position, id) and start after the cursor; fetches limit + 1 rows."""
    if params.cursor:
        position, row_id = decode_cursor(params.cursor, kind=kind)
        if descending:
            stmt = stmt.where(
                or_(
                    position_column < position,
                    and_(position_column == position, id_column < row_id),
                )
            )
        else:
            stmt = stmt.where(
                or_(
                    position_column > position,
                    and_(position_column == position, id_column > row_id),
                )
            )
    order = (
        (position_column.desc(), id_column.desc())
        if descending
        else (position_column.asc(), id_column.asc())
    )
    return stmt.order_by(*order).limit(params.limit + 1)


def page_of(rows: list[Any], params: PageParams, position_of: Any) -> tuple[list[Any], str | None]:
    """Split the limit + 1 fetched rows into this page and the next cursor."""
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    next_cursor = None
    if has_more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(position_of(last), last.id)
    return rows, next_cursor
