"""The inbox names each delivery's record (``entity_id``), for /ops, logs and filters.

Rows stored before this migration get theirs when they are next processed or replayed.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import KEY

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("entity_id", KEY))
        batch.create_index("ix_webhook_events_entity", ["entity_id"])


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_index("ix_webhook_events_entity")
        batch.drop_column("entity_id")
