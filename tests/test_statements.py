"""The fixed SQL of the hot path names columns by hand: held here to the models, so a
column added to a table cannot be silently left out of (or misspelled in) its statement."""

from __future__ import annotations

import pytest
from sqlalchemy import Table

from app.inbox import statements as inbox
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress import statements as ingress
from app.ingress.models import TelegramUpdate


def table_of(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


@pytest.mark.parametrize(
    ("columns", "types", "model", "left_to_defaults"),
    [
        (inbox.CONTACT_COLUMNS, inbox._CONTACT_TYPES, Contact, set()),
        (inbox.CONVERSATION_COLUMNS, inbox._CONVERSATION_TYPES, Conversation, set()),
        (
            inbox.MESSAGE_COLUMNS,
            inbox._MESSAGE_TYPES,
            ConversationMessage,
            # Inbound rows have no outbound message; PostgreSQL may draw the id.
            {"id", "outbound_message_id", "delivery_status"},
        ),
        (ingress._UPDATE_COLUMNS, None, TelegramUpdate, {"id"}),
    ],
    ids=["contacts", "conversations", "messages", "updates"],
)
def test_each_statement_lists_the_tables_columns(
    columns: tuple[str, ...],
    types: tuple[str, ...] | None,
    model: type,
    left_to_defaults: set[str],
) -> None:
    table_columns = {c.name for c in table_of(model).columns}
    assert len(set(columns)) == len(columns)
    assert set(columns) <= table_columns
    assert table_columns - set(columns) <= left_to_defaults
    if types is not None:
        assert len(types) == len(columns)
