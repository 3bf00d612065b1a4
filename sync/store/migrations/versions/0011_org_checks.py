"""The latest check of the Salesforce org against the mappings, run by the worker, read by
status, /healthz, /metrics and /ops.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "org_checks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("mapping_signature", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("findings", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("org_checks")
