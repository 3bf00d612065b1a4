"""The operator's alerts: each occurrence of a condition and the message it is owed (``operator_alerts``),
and which process sends them and what was sent last (``operator_alert_sender``).

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operator_alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("condition_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("program", sa.String(40)),
        sa.Column("facts", sa.Text, nullable=False),
        sa.Column("raised_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime()),
        sa.Column("owed", sa.String(8), nullable=False, server_default="none"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", UTCDateTime()),
        sa.Column("last_error", sa.String(120)),
        sa.Column("failing_since", UTCDateTime()),
        sa.Column("last_sent_at", UTCDateTime()),
    )
    op.create_index("ix_operator_alerts_resolved_key", "operator_alerts", ["resolved_at", "condition_key"])
    op.create_table(
        "operator_alert_sender",
        sa.Column("name", sa.String(16), primary_key=True),
        sa.Column("holder", sa.String(120)),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("last_what", sa.String(200)),
        sa.Column("last_at", UTCDateTime()),
        sa.Column("last_outcome", sa.String(120)),
    )


def downgrade() -> None:
    op.drop_table("operator_alert_sender")
    op.drop_index("ix_operator_alerts_resolved_key", "operator_alerts")
    op.drop_table("operator_alerts")
