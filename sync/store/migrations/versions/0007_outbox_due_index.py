"""An index for a flush's question "which records of this object are due, oldest first", so it
stays a short read however many records are already synced.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_crm_outbox_object_status_id", "crm_outbox", ["object", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_crm_outbox_object_status_id", "crm_outbox")
