"""outbound claim indexes

The dispatcher's claim reads each of its steps from an index in its order, up to
its limit (app/messages/states.py `claim`), instead of sorting every due message:
due queued rows by (next_attempt_at, created_at, id); those holding a pacing ticket
(a partial index: a few among many); sending rows by lease_until.

Revision ID: c3f8d2a61e07
Revises: e7a91c3d5b20
Create Date: 2026-12-07 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3f8d2a61e07"
down_revision: str | None = "e7a91c3d5b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DUE = ["status", "next_attempt_at", "created_at", "id"]
HOLDS_A_TICKET = sa.text("pacing_ticket IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_index("ix_outbound_messages_due")
        batch.create_index("ix_outbound_messages_due", DUE, unique=False)
        batch.create_index(
            "ix_outbound_messages_ticket_due",
            DUE,
            unique=False,
            postgresql_where=HOLDS_A_TICKET,
            sqlite_where=HOLDS_A_TICKET,
        )
        batch.create_index("ix_outbound_messages_lease", ["status", "lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_index("ix_outbound_messages_lease")
        batch.drop_index("ix_outbound_messages_ticket_due")
        batch.drop_index("ix_outbound_messages_due")
        batch.create_index("ix_outbound_messages_due", ["status", "next_attempt_at"], unique=False)
