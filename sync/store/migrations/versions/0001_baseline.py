"""The fixed tables as they were before migrations: inbox, ledger, CRM outbox.

A database made by an earlier release (``create_all``) is stamped with this revision rather
than running it.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import BODY, FINGERPRINT, KEY, Money, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)


def upgrade() -> None:
    _create_webhook_events()
    _create_commission_entries()
    _create_crm_outbox()
    _create_crm_commission_changes()


def _create_webhook_events() -> None:
    op.create_table(
        "webhook_events",
        _id(),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("body", BODY, nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("processed_at", UTCDateTime()),
    )
    op.create_index("ix_webhook_events_status_received", "webhook_events", ["status", "received_at"])


def _create_commission_entries() -> None:
    op.create_table(
        "commission_entries",
        _id(),
        sa.Column("entry_type", sa.String(16), nullable=False),
        sa.Column("transaction_key", KEY, nullable=False),
        sa.Column("reward_ref", KEY, nullable=False),
        sa.Column("partner_id", KEY, nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("currency", sa.String(16)),
        sa.Column("reward_status", sa.String(64)),
        sa.Column("occurred_at", UTCDateTime()),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.BigInteger),
        sa.UniqueConstraint("entry_type", "transaction_key", "reward_ref", name="uq_commission_entries_once"),
    )
    op.create_index("ix_commission_entries_partner", "commission_entries", ["partner_id"])


def _create_crm_outbox() -> None:
    op.create_table(
        "crm_outbox",
        _id(),
        sa.Column("object", sa.String(80), nullable=False),
        sa.Column("external_id", KEY, nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("fields", sa.JSON),
        sa.Column("sync_rank", sa.SmallInteger),
        sa.Column("sync_version", UTCDateTime()),
        sa.Column("sync_fingerprint", FINGERPRINT),
        sa.Column("sync_deleted_version", UTCDateTime()),
        sa.Column("sync_deleted_fingerprint", FINGERPRINT),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("changed_at", UTCDateTime()),
        sa.Column("salesforce_id", sa.String(18)),
        sa.Column("synced_at", UTCDateTime()),
        sa.Column("synced_generation", sa.BigInteger),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_at", UTCDateTime()),
        sa.UniqueConstraint("object", "external_id", name="uq_crm_outbox_record"),
    )
    op.create_index("ix_crm_outbox_due", "crm_outbox", ["status", "next_attempt_at"])


def _create_crm_commission_changes() -> None:
    op.create_table(
        "crm_commission_changes",
        _id(),
        sa.Column("partner_id", KEY, nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("crm_commission_changes", "crm_outbox", "commission_entries", "webhook_events"):
        op.drop_table(table)
