"""Backfill runs: each backfill's place (list and next page) and counts, so an interrupted one
carries on from its last completed page.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("entities", sa.String(100), nullable=False),
        sa.Column("since", UTCDateTime()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("next_page", sa.Integer, nullable=False),
        sa.Column("last_page", sa.Integer),
        sa.Column("records", sa.Integer, nullable=False, server_default="0"),
        sa.Column("applied", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unchanged", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("last_error", sa.Text),
        sa.Column("job_id", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("backfill_runs")
