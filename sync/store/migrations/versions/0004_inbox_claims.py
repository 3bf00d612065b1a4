"""Workers claim pending deliveries from the inbox: a claim lasts until ``claimed_until`` (so a
worker that dies lets go of its rows by itself), and an index finds the oldest pending rows.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("claimed_until", UTCDateTime()))
        batch.create_index("ix_webhook_events_status_id", ["status", "id"])


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_index("ix_webhook_events_status_id")
        batch.drop_column("claimed_until")
