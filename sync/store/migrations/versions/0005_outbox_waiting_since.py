"""The CRM outbox remembers since when a record has had changes Salesforce has not received (the
arrival of the oldest delivery behind them), for the end-to-end Salesforce lag.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crm_outbox") as batch:
        batch.add_column(sa.Column("waiting_since", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("crm_outbox") as batch:
        batch.drop_column("waiting_since")
