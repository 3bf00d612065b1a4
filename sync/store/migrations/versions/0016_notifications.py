"""The messages the mappings' ``notify`` entries send (``notifications``): one row per program,
delivery and entry name, so a delivery applied again never sends twice.

Revision ID: 0016
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("program", sa.String(40), nullable=False, server_default="default"),
        sa.Column("inbox_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("url_variable", sa.String(120), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", UTCDateTime()),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime()),
        sa.UniqueConstraint("program", "inbox_id", "name", name="uq_notifications_delivery_name"),
    )
    op.create_index("ix_notifications_status_next_try_at", "notifications", ["status", "next_try_at"])
    op.create_index("ix_notifications_inbox_id", "notifications", ["inbox_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_inbox_id", "notifications")
    op.drop_index("ix_notifications_status_next_try_at", "notifications")
    op.drop_table("notifications")
