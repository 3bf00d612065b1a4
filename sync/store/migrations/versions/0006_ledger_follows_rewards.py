"""The ledger follows each reward through its life: entries are numbered per reward (``seq``,
UNIQUE with the reward, instead of one commission and one reversal per reward), say how the
reward stands (``standing``) and whether it is money (``is_currency``); the
``partner_commissions`` view adds them up per partner and currency.

Entries booked before keep their meaning: a commission is entry 1 of its reward, standing as its
status says (ok: approved, rejected: rejected, anything else: pending), counted as money; a
refund's reversal is entry 2, and gains entry 3, the same amount standing ``reversed``, so every
reward's entries add up to what it is now, as new entries do.

A later migration that rebuilds ``commission_entries`` (SQLite copies a table to alter it) must
drop the view first and create it again after.

Revision ID: 0006
Revises: 0005
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from sync.store.sqltypes import KEY, Money, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VIEW = "partner_commissions"

_entries = sa.table(
    "commission_entries",
    sa.column("id", sa.Integer),
    sa.column("entry_type", sa.String),
    sa.column("transaction_key", KEY),
    sa.column("reward_ref", KEY),
    sa.column("partner_id", KEY),
    sa.column("amount", Money()),
    sa.column("currency", sa.String),
    sa.column("reward_status", sa.String),
    sa.column("occurred_at", UTCDateTime()),
    sa.column("recorded_at", UTCDateTime()),
    sa.column("event_id", sa.BigInteger),
    sa.column("seq", sa.Integer),
    sa.column("standing", sa.String),
    sa.column("is_currency", sa.Boolean),
)

# PostgreSQL and MariaDB add NUMERIC exactly.
_SUMS = """
CREATE VIEW partner_commissions AS
SELECT partner_id, currency, is_currency,
       SUM(CASE WHEN standing = 'approved' THEN amount ELSE 0 END) AS approved,
       SUM(CASE WHEN standing = 'pending' THEN amount ELSE 0 END) AS pending,
       SUM(CASE WHEN standing = 'rejected' THEN amount ELSE 0 END) AS rejected,
       SUM(CASE WHEN standing = 'reversed' THEN amount ELSE 0 END) AS reversed,
       SUM(CASE WHEN standing IN ('approved', 'pending') THEN amount ELSE 0 END) AS owed
FROM commission_entries
GROUP BY partner_id, currency, is_currency
"""

# SQLite keeps amounts as text ("-44.7") and its SUM would add them as floating point: read each
# as whole millionths (an exact 64-bit integer), add those, and write the sum back as text.
_MICROS = """(CASE WHEN substr(amount, 1, 1) = '-' THEN -1 ELSE 1 END) * (
    CAST(CASE WHEN instr(amount, '.') > 0 THEN substr(ltrim(amount, '-'), 1, instr(ltrim(amount, '-'), '.') - 1)
              ELSE ltrim(amount, '-') END AS INTEGER) * 1000000
    + CASE WHEN instr(amount, '.') > 0
           THEN CAST(substr(substr(amount, instr(amount, '.') + 1) || '000000', 1, 6) AS INTEGER)
           ELSE 0 END)"""


def _text(total: str) -> str:
    return (f"CASE WHEN {total} < 0 THEN '-' ELSE '' END || (abs({total}) / 1000000) || '.' "
            f"|| substr('000000' || (abs({total}) % 1000000), -6)")


_SQLITE = f"""
CREATE VIEW partner_commissions AS
SELECT partner_id, currency, is_currency,
       {_text('approved')} AS approved,
       {_text('pending')} AS pending,
       {_text('rejected')} AS rejected,
       {_text('reversed')} AS reversed,
       {_text('approved + pending')} AS owed
FROM (
    SELECT partner_id, currency, is_currency,
           SUM(CASE WHEN standing = 'approved' THEN micros ELSE 0 END) AS approved,
           SUM(CASE WHEN standing = 'pending' THEN micros ELSE 0 END) AS pending,
           SUM(CASE WHEN standing = 'rejected' THEN micros ELSE 0 END) AS rejected,
           SUM(CASE WHEN standing = 'reversed' THEN micros ELSE 0 END) AS reversed
    FROM (SELECT partner_id, currency, is_currency, standing, {_MICROS} AS micros FROM commission_entries) AS e
    GROUP BY partner_id, currency, is_currency
) AS t
"""


def upgrade() -> None:
    with op.batch_alter_table("commission_entries") as batch:
        batch.add_column(sa.Column("seq", sa.Integer))
        batch.add_column(sa.Column("standing", sa.String(16)))
        batch.add_column(sa.Column("is_currency", sa.Boolean, nullable=False, server_default=sa.true()))

    e = _entries
    status = sa.func.lower(sa.func.trim(sa.func.coalesce(e.c.reward_status, "")))
    op.execute(e.update().values(
        seq=sa.case((e.c.entry_type == "commission", 1), else_=2),
        standing=sa.case((status == "ok", "approved"), (status == "rejected", "rejected"), else_="pending"),
    ))
    with op.batch_alter_table("commission_entries") as batch:
        batch.alter_column("seq", existing_type=sa.Integer, nullable=False)
        batch.alter_column("standing", existing_type=sa.String(16), nullable=False)
        batch.drop_constraint("uq_commission_entries_once", type_="unique")
        batch.create_unique_constraint("uq_commission_entries_seq", ["transaction_key", "reward_ref", "seq"])

    # Each refund's reversal gains its other half: the amount now stands reversed. Written from
    # here, not in SQL, so the amount is negated exactly on SQLite too.
    conn = op.get_bind()
    now = datetime.now(timezone.utc)
    last = 0
    while True:
        reversals = conn.execute(
            sa.select(e).where(e.c.entry_type == "reversal", e.c.seq == 2, e.c.id > last).order_by(e.c.id).limit(1000)
        ).all()
        if not reversals:
            break
        last = reversals[-1].id
        conn.execute(e.insert(), [
            {"entry_type": "reversal", "transaction_key": r.transaction_key, "reward_ref": r.reward_ref, "seq": 3,
             "partner_id": r.partner_id, "amount": -r.amount, "currency": r.currency, "is_currency": True,
             "reward_status": r.reward_status, "standing": "reversed", "occurred_at": r.occurred_at,
             "recorded_at": r.recorded_at or now, "event_id": r.event_id}
            for r in reversals
        ])

    op.execute(_SQLITE if conn.dialect.name == "sqlite" else _SUMS)


def downgrade() -> None:
    """Back to one commission and one reversal per reward: fails (on the constraint) once a
    reward has been adjusted, since the old table cannot say that."""
    op.execute(f"DROP VIEW {VIEW}")
    e = _entries
    op.execute(e.delete().where(e.c.standing == "reversed", e.c.entry_type == "reversal"))
    with op.batch_alter_table("commission_entries") as batch:
        batch.drop_constraint("uq_commission_entries_seq", type_="unique")
        batch.create_unique_constraint("uq_commission_entries_once", ["entry_type", "transaction_key", "reward_ref"])
        batch.drop_column("is_currency")
        batch.drop_column("standing")
        batch.drop_column("seq")
