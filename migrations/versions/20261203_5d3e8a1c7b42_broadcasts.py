"""broadcasts

Revision ID: 5d3e8a1c7b42
Revises: b41c2e7f9a10
Create Date: 2026-12-03 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d3e8a1c7b42"
down_revision: str | None = "b41c2e7f9a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("parse_mode", sa.String(length=16), nullable=True),
        sa.Column("recipient_kind", sa.String(length=16), nullable=False),
        sa.Column("recipient_count", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=20), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("reviewed_by", sa.Uuid(), nullable=True),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["telegram_connections.id"],
            name=op.f("fk_broadcasts_connection_id_telegram_connections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_broadcasts_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
    )
    with op.batch_alter_table("broadcasts", schema=None) as batch_op:
        batch_op.create_index("ix_broadcasts_connection", ["connection_id"], unique=False)
        batch_op.create_index(
            "ix_broadcasts_workspace_created", ["workspace_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "uq_broadcasts_idempotency",
            ["workspace_id", "idempotency_key"],
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        )

    # Each recipient's message is an ordinary outbound message, linked and numbered.
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("broadcast_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("broadcast_position", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_outbound_messages_broadcast_id_broadcasts"),
            "broadcasts",
            ["broadcast_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index(
            "ix_outbound_messages_broadcast",
            ["broadcast_id", "broadcast_position"],
            unique=False,
        )

    # A broadcast's own events (requested, approved, rejected, cancelled).
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("broadcast_id", sa.Uuid(), nullable=True))
        batch_op.create_index("ix_audit_events_broadcast", ["broadcast_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_broadcast")
        batch_op.drop_column("broadcast_id")
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbound_messages_broadcast")
        batch_op.drop_constraint(
            batch_op.f("fk_outbound_messages_broadcast_id_broadcasts"), type_="foreignkey"
        )
        batch_op.drop_column("broadcast_position")
        batch_op.drop_column("broadcast_id")
    with op.batch_alter_table("broadcasts", schema=None) as batch_op:
        batch_op.drop_index("uq_broadcasts_idempotency")
        batch_op.drop_index("ix_broadcasts_workspace_created")
        batch_op.drop_index("ix_broadcasts_connection")
    op.drop_table("broadcasts")
