"""Several Partnero programs in one deployment: every stored row knows its program.

``program`` (NOT NULL, server default ``'default'``) is added to the inbox, the ledger, the outbox
and its commission changes, the bulk jobs and the backfill runs, so every existing row becomes the
program ``default``'s and nothing needs syncing again. A record's identity becomes program plus
id: the ledger numbers entries per (program, transaction, reward), the outbox keeps one row per
(program, object, external id), and the ``partner_commissions`` view adds up per program, so
amounts never add across programs. The outbox gains ``entity_id``, the Partnero id of the record
(its external id may be another value a mapping's ``key`` computes); existing rows hold their
external id, which was the Partnero id until now.

The mapped tables are re-keyed by ``Warehouse.migrate`` (they are not the migrations'), in the
same ``partnero-sync migrate``.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import KEY

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

VIEW = "partner_commissions"
PROGRAM_TABLES = ("webhook_events", "commission_entries", "crm_commission_changes", "crm_outbox", "crm_bulk_jobs",
                  "backfill_runs")


def _sums(by: str) -> str:
    """The view on PostgreSQL and MariaDB (which add NUMERIC exactly), grouped by ``by``."""
    return f"""
CREATE VIEW partner_commissions AS
SELECT {by},
       SUM(CASE WHEN standing = 'approved' THEN amount ELSE 0 END) AS approved,
       SUM(CASE WHEN standing = 'pending' THEN amount ELSE 0 END) AS pending,
       SUM(CASE WHEN standing = 'rejected' THEN amount ELSE 0 END) AS rejected,
       SUM(CASE WHEN standing = 'reversed' THEN amount ELSE 0 END) AS reversed,
       SUM(CASE WHEN standing IN ('approved', 'pending') THEN amount ELSE 0 END) AS owed
FROM commission_entries
GROUP BY {by}
"""

# SQLite keeps amounts as text: added up as whole millionths, as 0006 explains.
_MICROS = """(CASE WHEN substr(amount, 1, 1) = '-' THEN -1 ELSE 1 END) * (
    CAST(CASE WHEN instr(amount, '.') > 0 THEN substr(ltrim(amount, '-'), 1, instr(ltrim(amount, '-'), '.') - 1)
              ELSE ltrim(amount, '-') END AS INTEGER) * 1000000
    + CASE WHEN instr(amount, '.') > 0
           THEN CAST(substr(substr(amount, instr(amount, '.') + 1) || '000000', 1, 6) AS INTEGER)
           ELSE 0 END)"""


def _text(total: str) -> str:
    return (f"CASE WHEN {total} < 0 THEN '-' ELSE '' END || (abs({total}) / 1000000) || '.' "
            f"|| substr('000000' || (abs({total}) % 1000000), -6)")


def _sqlite_view(by: str) -> str:
    """The view on SQLite, grouped by ``by`` (the columns it adds up per)."""
    return f"""
CREATE VIEW partner_commissions AS
SELECT {by},
       {_text('approved')} AS approved,
       {_text('pending')} AS pending,
       {_text('rejected')} AS rejected,
       {_text('reversed')} AS reversed,
       {_text('approved + pending')} AS owed
FROM (
    SELECT {by},
           SUM(CASE WHEN standing = 'approved' THEN micros ELSE 0 END) AS approved,
           SUM(CASE WHEN standing = 'pending' THEN micros ELSE 0 END) AS pending,
           SUM(CASE WHEN standing = 'rejected' THEN micros ELSE 0 END) AS rejected,
           SUM(CASE WHEN standing = 'reversed' THEN micros ELSE 0 END) AS reversed
    FROM (SELECT {by}, standing, {_MICROS} AS micros FROM commission_entries) AS e
    GROUP BY {by}
) AS t
"""


def _create_view(by: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(_sqlite_view(by))
    else:
        op.execute(_sums(by))


def upgrade() -> None:
    # SQLite copies commission_entries to change its constraints: the view goes first.
    op.execute(f"DROP VIEW {VIEW}")
    for table in PROGRAM_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("program", sa.String(40), nullable=False, server_default="default"))
    op.create_index("ix_webhook_events_program_status_id", "webhook_events", ["program", "status", "id"])

    with op.batch_alter_table("commission_entries") as batch:
        batch.drop_constraint("uq_commission_entries_seq", type_="unique")
        batch.create_unique_constraint("uq_commission_entries_program_seq",
                                       ["program", "transaction_key", "reward_ref", "seq"])
        batch.drop_index("ix_commission_entries_partner")
        batch.create_index("ix_commission_entries_program_partner", ["program", "partner_id"])
    _create_view("program, partner_id, currency, is_currency")

    with op.batch_alter_table("crm_outbox") as batch:
        batch.add_column(sa.Column("entity_id", KEY))
    outbox = sa.table("crm_outbox", sa.column("entity_id", KEY), sa.column("external_id", KEY))
    op.execute(outbox.update().values(entity_id=outbox.c.external_id))
    with op.batch_alter_table("crm_outbox") as batch:
        batch.alter_column("entity_id", existing_type=KEY, nullable=False)
        batch.drop_constraint("uq_crm_outbox_record", type_="unique")
        batch.create_unique_constraint("uq_crm_outbox_program_record", ["program", "object", "external_id"])
        batch.drop_index("ix_crm_outbox_object_status_id")
        batch.create_index("ix_crm_outbox_program_object_status_id", ["program", "object", "status", "id"])
        batch.create_index("ix_crm_outbox_program_entity", ["program", "object", "entity_id"])

    # The open scope names the program too (sync.store.runs.scope): room for it.
    with op.batch_alter_table("backfill_runs") as batch:
        batch.alter_column("open_scope", existing_type=sa.String(160), type_=sa.String(200))


def downgrade() -> None:
    """Back to one program: fails (on a constraint) once another program has rows."""
    op.execute(f"DROP VIEW {VIEW}")
    with op.batch_alter_table("backfill_runs") as batch:
        batch.alter_column("open_scope", existing_type=sa.String(200), type_=sa.String(160))
    with op.batch_alter_table("crm_outbox") as batch:
        batch.drop_index("ix_crm_outbox_program_entity")
        batch.drop_index("ix_crm_outbox_program_object_status_id")
        batch.create_index("ix_crm_outbox_object_status_id", ["object", "status", "id"])
        batch.drop_constraint("uq_crm_outbox_program_record", type_="unique")
        batch.create_unique_constraint("uq_crm_outbox_record", ["object", "external_id"])
        batch.drop_column("entity_id")
    with op.batch_alter_table("commission_entries") as batch:
        batch.drop_index("ix_commission_entries_program_partner")
        batch.create_index("ix_commission_entries_partner", ["partner_id"])
        batch.drop_constraint("uq_commission_entries_program_seq", type_="unique")
        batch.create_unique_constraint("uq_commission_entries_seq", ["transaction_key", "reward_ref", "seq"])
    op.drop_index("ix_webhook_events_program_status_id", "webhook_events")
    for table in PROGRAM_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("program")
    _create_view("partner_id, currency, is_currency")
