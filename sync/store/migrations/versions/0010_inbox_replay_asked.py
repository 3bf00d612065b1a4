"""/ops's Replay hands a delivery back to the workers: the inbox notes when that was asked, so
its page shows it queued, then its outcome.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("replay_asked_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("replay_asked_at")
