"""polling lease on telegram connections

Revision ID: c662a2cf0e66
Revises: afe509d07642
Create Date: 2026-11-21 08:33:17.354142
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c662a2cf0e66"
down_revision: str | None = "afe509d07642"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("telegram_connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("poll_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("poll_lease_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("telegram_connections", schema=None) as batch_op:
        batch_op.drop_column("poll_lease_until")
        batch_op.drop_column("poll_owner")
