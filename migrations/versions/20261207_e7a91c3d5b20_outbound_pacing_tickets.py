"""outbound pacing tickets

A message waiting for its chat keeps a ticket in its chat's order instead of a
place in time (app/messages/pacing.py): `pacing_ticket` replaces `holds_place`.

Revision ID: e7a91c3d5b20
Revises: 5d3e8a1c7b42
Create Date: 2026-12-07 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e7a91c3d5b20"
down_revision: str | None = "5d3e8a1c7b42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_messages") as batch:
        batch.add_column(sa.Column("pacing_ticket", sa.BigInteger(), nullable=True))
    # A message that held a place gets a ticket whose turn has passed: it goes as
    # soon as its chat may receive, ahead of tickets given from now on.
    op.execute("UPDATE outbound_messages SET pacing_ticket = 1 WHERE holds_place")
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_column("holds_place")


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages") as batch:
        batch.add_column(
            sa.Column("holds_place", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.execute("UPDATE outbound_messages SET holds_place = (pacing_ticket IS NOT NULL)")
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_column("pacing_ticket")
