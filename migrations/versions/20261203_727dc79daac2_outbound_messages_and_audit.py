"""outbound messages and audit

Revision ID: 727dc79daac2
Revises: c662a2cf0e66
Create Date: 2026-12-03 08:33:02.142932
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "727dc79daac2"
down_revision: str | None = "c662a2cf0e66"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("actor_token_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_audit_events_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_message", ["message_id"], unique=False)
        batch_op.create_index(
            "ix_audit_events_workspace_created", ["workspace_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "outbound_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("chat_id", sa.String(length=64), nullable=False),
        sa.Column("business_connection_id", sa.String(length=200), nullable=True),
        sa.Column("message_thread_id", sa.BigInteger(), nullable=True),
        sa.Column("direct_messages_topic_id", sa.BigInteger(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("parse_mode", sa.String(length=16), nullable=True),
        sa.Column("reply_to_message_id", sa.BigInteger(), nullable=True),
        sa.Column("disable_notification", sa.Boolean(), nullable=True),
        sa.Column("protect_content", sa.Boolean(), nullable=True),
        sa.Column("link_preview_options", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("reviewed_by", sa.Uuid(), nullable=True),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("telegram_message_id", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["telegram_connections.id"],
            name=op.f("fk_outbound_messages_connection_id_telegram_connections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_outbound_messages_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_outbound_messages_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_messages")),
    )
    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbound_messages_connection_status", ["connection_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_outbound_messages_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            "ix_outbound_messages_workspace_created",
            ["workspace_id", "created_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            "uq_outbound_messages_idempotency",
            ["workspace_id", "idempotency_key"],
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        )

    with op.batch_alter_table("conversation_messages", schema=None) as batch_op:
        # An outbound message has no Telegram id until it is sent.
        batch_op.alter_column("telegram_message_id", existing_type=sa.BigInteger(), nullable=True)
        batch_op.add_column(sa.Column("outbound_message_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("delivery_status", sa.String(length=20), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_conversation_messages_outbound_message_id"), ["outbound_message_id"]
        )

    with op.batch_alter_table("telegram_connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("outbound_paused_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("telegram_connections", schema=None) as batch_op:
        batch_op.drop_column("outbound_paused_at")

    with op.batch_alter_table("conversation_messages", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_conversation_messages_outbound_message_id"), type_="unique"
        )
        batch_op.drop_column("delivery_status")
        batch_op.drop_column("outbound_message_id")
        batch_op.alter_column("telegram_message_id", existing_type=sa.BigInteger(), nullable=False)

    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_outbound_messages_idempotency",
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        )
        batch_op.drop_index("ix_outbound_messages_workspace_created")
        batch_op.drop_index("ix_outbound_messages_due")
        batch_op.drop_index("ix_outbound_messages_connection_status")

    op.drop_table("outbound_messages")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_workspace_created")
        batch_op.drop_index("ix_audit_events_message")

    op.drop_table("audit_events")
