"""outbound pacing places

Revision ID: b41c2e7f9a10
Revises: 727dc79daac2
Create Date: 2026-12-03 13:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b41c2e7f9a10"
down_revision: str | None = "727dc79daac2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A message that holds a place in its chat's pacing schedule keeps it when due
    # again (app/messages/pacing.py).
    with op.batch_alter_table("outbound_messages") as batch:
        batch.add_column(
            sa.Column("holds_place", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_column("holds_place")
