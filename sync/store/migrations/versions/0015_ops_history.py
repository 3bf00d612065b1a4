"""ops_history: one sample per program per minute of what ``/ops`` charts (``sync.store.history``),
kept for 25 hours.

Revision ID: 0015
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import PROGRAM, UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ops_history",
        sa.Column("program", PROGRAM, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("received", sa.Integer),
        sa.Column("processed", sa.Integer),
        sa.Column("failed", sa.Integer),
        sa.Column("received_total", sa.BigInteger),
        sa.Column("processed_total", sa.BigInteger),
        sa.Column("failed_total", sa.BigInteger),
        sa.Column("oldest_pending_age", sa.Integer),
        sa.Column("crm_backlog", sa.Integer),
        sa.Column("crm_lag", sa.Integer),
        sa.Column("crm_refused", sa.Integer),
        sa.PrimaryKeyConstraint("program", "at", name="pk_ops_history"),
    )
    op.create_index("ix_ops_history_at", "ops_history", ["at"])


def downgrade() -> None:
    op.drop_index("ix_ops_history_at", "ops_history")
    op.drop_table("ops_history")
