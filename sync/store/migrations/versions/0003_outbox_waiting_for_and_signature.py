"""The CRM outbox remembers which parent a waiting record waits for (so only that parent's sync
wakes it) and which mapping a record was sent with (so a changed mapping retries refusals).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import KEY

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crm_outbox") as batch:
        batch.add_column(sa.Column("waiting_for", KEY))
        batch.add_column(sa.Column("sent_with", sa.String(16)))
        batch.create_index("ix_crm_outbox_waiting_for", ["waiting_for"])


def downgrade() -> None:
    with op.batch_alter_table("crm_outbox") as batch:
        batch.drop_index("ix_crm_outbox_waiting_for")
        batch.drop_column("sent_with")
        batch.drop_column("waiting_for")
