"""The commission ledger: entries are only ever added, and constraints make booking twice impossible.

A commission is booked once per reward of a transaction; a refund adds one reversal per booked
commission, copying it with the amount negated. A partner's commission owed is the sum of their
entries whose reward status is not ``rejected``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync import db
from sync.mapping import Reward
from sync.sqltypes import KEY, Money, UTCDateTime

COMMISSION = "commission"
REVERSAL = "reversal"

commission_entries = sa.Table(
    "commission_entries",
    db.metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
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
    sa.Index("ix_commission_entries_partner", "partner_id"),
)


def book_many(conn: Connection, items: Iterable[tuple[str, Reward, int | None]]) -> None:
    """Book one commission per (transaction key, reward, event id), in one statement; a reward
    booked before is left as it was."""
    now = datetime.now(timezone.utc)
    rows = [
        {
            "entry_type": COMMISSION,
            "transaction_key": transaction_key,
            "reward_ref": reward.ref,
            "partner_id": reward.partner_id,
            "amount": reward.amount,
            "currency": reward.currency,
            "reward_status": reward.status,
            "occurred_at": reward.occurred_at,
            "recorded_at": now,
            "event_id": event_id,
        }
        for transaction_key, reward, event_id in items
    ]
    rows.sort(key=lambda r: (r["transaction_key"], r["reward_ref"]))
    db.insert_ignore(conn, commission_entries, rows)


def reverse_many(conn: Connection, refunds: dict[str, tuple[datetime | None, int | None]]) -> set[str]:
    """Add the missing reversal of every commission booked for each refunded transaction.

    ``refunds`` is {transaction key: (refunded at, event id)}. What is reversed is what was
    booked, read from the ledger, whatever the refund's payload says. Returns the partners whose
    commission this changed.
    """
    if not refunds:
        return set()
    t = commission_entries
    keys = sorted(refunds)
    entries = []
    for chunk in db.chunks(keys, 500):
        entries += conn.execute(sa.select(t).where(t.c.transaction_key.in_(chunk))).all()
    reversed_refs = {(e.transaction_key, e.reward_ref) for e in entries if e.entry_type == REVERSAL}
    now = datetime.now(timezone.utc)
    rows = [
        {
            "entry_type": REVERSAL,
            "transaction_key": entry.transaction_key,
            "reward_ref": entry.reward_ref,
            "partner_id": entry.partner_id,
            "amount": -entry.amount,
            "currency": entry.currency,
            "reward_status": entry.reward_status,
            "occurred_at": refunds[entry.transaction_key][0] or now,
            "recorded_at": now,
            "event_id": refunds[entry.transaction_key][1],
        }
        for entry in entries
        if entry.entry_type == COMMISSION and (entry.transaction_key, entry.reward_ref) not in reversed_refs
    ]
    rows.sort(key=lambda r: (r["transaction_key"], r["reward_ref"]))
    db.insert_ignore(conn, commission_entries, rows)
    return {row["partner_id"] for row in rows}


def entries(conn: Connection, transaction_key: str) -> list[dict[str, Any]]:
    """Every entry booked for one transaction, in the order they were recorded."""
    t = commission_entries
    query = sa.select(t).where(t.c.transaction_key == transaction_key).order_by(t.c.id)
    return [dict(row._mapping) for row in conn.execute(query)]


def commission_owed(conn: Connection, partner_ids: Iterable[str] | None = None) -> dict[str, Decimal]:
    """Net commission owed per partner: the sum of entries whose reward status is not rejected.

    Summed here, exactly, so SQLite (which keeps amounts as text) agrees with PostgreSQL.
    """
    t = commission_entries
    # Exactly the documented SQL: SUM(amount) WHERE reward_status <> 'rejected'.
    owed = t.c.reward_status != "rejected"
    if partner_ids is not None:
        owed = sa.and_(owed, t.c.partner_id.in_(list(partner_ids)))
    if conn.dialect.name != "sqlite":  # exact NUMERIC arithmetic in the database
        query = sa.select(t.c.partner_id, sa.func.sum(t.c.amount)).where(owed).group_by(t.c.partner_id)
        return {partner_id: Decimal(total).normalize() if total else Decimal(0)
                for partner_id, total in conn.execute(query)}
    totals: dict[str, Decimal] = {}
    for partner_id, amount in conn.execute(sa.select(t.c.partner_id, t.c.amount).where(owed)):
        totals[partner_id] = totals.get(partner_id, Decimal(0)) + amount
    return totals
