"""Bulk API 2.0 ingest jobs a flush started (``crm_bulk_jobs``), and the outbox rows each one
carries (``crm_outbox.bulk_job``, ``crm_outbox.bulk_generation``).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_bulk_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("job_id", sa.String(18), nullable=False),
        sa.Column("object", sa.String(80), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("polls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_poll_at", UTCDateTime()),
        sa.Column("done_at", UTCDateTime()),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("job_id", name="uq_crm_bulk_jobs_job_id"),
    )
    op.create_index("ix_crm_bulk_jobs_done_at", "crm_bulk_jobs", ["done_at"])
    with op.batch_alter_table("crm_outbox") as batch:
        batch.add_column(sa.Column("bulk_job", sa.String(18)))
        batch.add_column(sa.Column("bulk_generation", sa.BigInteger))
    op.create_index("ix_crm_outbox_bulk_job", "crm_outbox", ["bulk_job"])


def downgrade() -> None:
    op.drop_index("ix_crm_outbox_bulk_job", "crm_outbox")
    with op.batch_alter_table("crm_outbox") as batch:
        batch.drop_column("bulk_generation")
        batch.drop_column("bulk_job")
    op.drop_index("ix_crm_bulk_jobs_done_at", "crm_bulk_jobs")
    op.drop_table("crm_bulk_jobs")
