"""The commission ledger: entries are only ever added, one numbered chain per program and reward,
and a UNIQUE constraint on (program, transaction, reward, number) makes booking twice impossible.

Every read and write is of one program (a record's identity is its program and its id), and the
``partner_commissions`` view adds up per program: amounts never add across programs.

What the entries should be is decided by ``sync.rules.commissions`` (pure); this module reads and
appends them, and reads the totals of the ``partner_commissions`` view the migrations create.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync.mapping import Reward
from sync.rules import commissions
from sync.rules.commissions import Bucket, Entry
from sync.settings import DEFAULT_PROGRAM
from sync.store import db
from sync.store.sqltypes import KEY, PROGRAM, Money, UTCDateTime

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
    #: The reward's status as Partnero sent it.
    sa.Column("reward_status", sa.String(64)),
    sa.Column("occurred_at", UTCDateTime()),
    sa.Column("recorded_at", UTCDateTime(), nullable=False),
    sa.Column("event_id", sa.BigInteger),
    #: The entry's number in its reward's chain: 1, 2, …
    sa.Column("seq", sa.Integer, nullable=False),
    #: approved, pending, rejected or reversed (``sync.rules.commissions.standing``).
    sa.Column("standing", sa.String(16), nullable=False),
    #: False for points and credits, kept apart from money.
    sa.Column("is_currency", sa.Boolean, nullable=False, server_default=sa.true()),
    #: The Partnero program the transaction is of.
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
    sa.UniqueConstraint("program", "transaction_key", "reward_ref", "seq", name="uq_commission_entries_program_seq"),
    sa.Index("ix_commission_entries_program_partner", "program", "partner_id"),
)

#: Totals per program, partner, currency and kind (money or not), made by the migrations; exact on every
#: database (on SQLite, which keeps amounts as text, it adds them up as whole millionths).
VIEW = "partner_commissions"
TOTALS = ("approved", "pending", "rejected", "reversed", "owed")
partner_commissions = sa.table(
    VIEW,
    sa.column("program", PROGRAM),
    sa.column("partner_id", KEY),
    sa.column("currency", sa.String(16)),
    sa.column("is_currency", sa.Boolean()),
    *(sa.column(name, Money()) for name in TOTALS),
)


@dataclass(frozen=True)
class Totals:
    """One row of ``partner_commissions``: a partner's commission in one program and one currency
    (or unit)."""

    partner_id: str
    currency: str | None
    is_currency: bool
    approved: Decimal
    pending: Decimal
    rejected: Decimal
    reversed: Decimal
    owed: Decimal
    program: str = DEFAULT_PROGRAM


ZERO = Totals("", None, True, *(Decimal(0),) * 5)


@dataclass(frozen=True)
class Settlement:
    """What one batch tells about one transaction, for the ledger to follow."""

    transaction_key: str
    #: The rewards of the transaction's newest state, when that state is in the batch; None when
    #: it is not (it was applied before): what stands is kept, and only a refund moves it.
    rewards: tuple[Reward, ...] | None
    refunded: bool
    changed_at: datetime
    refunded_at: datetime | None
    #: The delivery whose state the entries follow, and the refund's (when in the batch).
    event_id: int | None
    refund_event_id: int | None = None


def settle_many(conn: Connection, settlements: Sequence[Settlement], now: datetime, *,
                program: str = DEFAULT_PROGRAM) -> set[str]:
    """Add the entries that bring each transaction of ``program`` to its rewards' newest state,
    recorded at ``now``; returns the partners whose commission changed (both sides of a move).

    The caller holds the transactions' warehouse rows locked (``Warehouse.apply_many``), so the
    entries read here are every entry committed so far, and no one else appends to these chains
    until this commits; the UNIQUE constraint refuses a second entry with the same number anyway.
    """
    if not settlements:
        return set()
    stored = chains(conn, sorted({s.transaction_key for s in settlements}), program=program)
    added: list[Entry] = []
    for s in settlements:
        added += commissions.settle(s.transaction_key, stored.get(s.transaction_key, []), s.rewards, s.refunded,
                                    s.changed_at, s.refunded_at, s.event_id, s.refund_event_id)
    if added:
        ordered = sorted(added, key=lambda e: (e.transaction_key, e.reward_ref, e.seq))
        rows = [_row(entry, now, program) for entry in ordered]
        conn.execute(commission_entries.insert(), rows)
    return {entry.bucket.partner_id for entry in added}


def entries(conn: Connection, transaction_key: str, *, program: str = DEFAULT_PROGRAM) -> list[dict[str, Any]]:
    """Every entry booked for one transaction of ``program``, in the order they were recorded."""
    t = commission_entries
    query = sa.select(t).where(t.c.program == program, t.c.transaction_key == transaction_key).order_by(t.c.id)
    return [dict(row._mapping) for row in conn.execute(query)]


def partner_entries(conn: Connection, partner_id: str, limit: int | None = None, *,
                    program: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """One partner's entries (in ``program``; None: in every program, each entry saying its
    own), oldest first (the newest ``limit`` of them), and how many there are."""
    t = commission_entries
    mine = [t.c.partner_id == partner_id, *_of(t.c.program, program)]
    count = conn.execute(sa.select(sa.func.count()).select_from(t).where(*mine)).scalar_one()
    query = sa.select(t).where(*mine).order_by(t.c.id.desc())
    if limit:
        query = query.limit(limit)
    rows = [dict(row._mapping) for row in conn.execute(query)]
    return rows[::-1], count


def totals(conn: Connection, partner_ids: Iterable[str] | None = None, *,
           program: str | None = None) -> list[Totals]:
    """Rows of ``partner_commissions`` (of ``partner_ids``, else all; of ``program``, None: of
    every program, each row its own): per program, partner, currency and kind, ordered by
    partner, then program, then money first, then currency."""
    v = partner_commissions
    mine = _of(v.c.program, program)
    if partner_ids is None:
        queries = [sa.select(v).where(*mine)]
    else:
        queries = [sa.select(v).where(*mine, v.c.partner_id.in_(chunk))
                   for chunk in db.chunks(sorted(set(partner_ids)), 500)]
    found = [Totals(r.partner_id, r.currency, bool(r.is_currency), *(getattr(r, n) for n in TOTALS), program=r.program)
             for query in queries for r in conn.execute(query)]
    return sorted(found, key=lambda t: (t.partner_id, t.program, not t.is_currency, t.currency or ""))


def currency_use(conn: Connection, *, program: str = DEFAULT_PROGRAM) -> dict[str | None, tuple[int, int]]:
    """Per currency of ``program``'s money commission: (transactions, partners) with entries in it."""
    t = commission_entries
    query = (sa.select(t.c.currency, sa.func.count(sa.distinct(t.c.transaction_key)),
                       sa.func.count(sa.distinct(t.c.partner_id)))
             .where(t.c.program == program, t.c.is_currency).group_by(t.c.currency))
    return {currency: (transactions, partners) for currency, transactions, partners in conn.execute(query)}


def program_currency(conn: Connection, configured: str | None, *, program: str = DEFAULT_PROGRAM) -> str | None:
    """The currency Salesforce gets ``program``'s totals in: ``configured`` (the program's own
    setting), else the one most used in the program."""
    return configured or summary(conn, None, program=program).currency


@dataclass(frozen=True)
class Summary:
    """The ledger's currencies, for ``partnero-sync status``: which one Salesforce gets, and
    which partners earn in others (left out of Salesforce rather than added in)."""

    #: The program's currency; None: no money commission yet.
    currency: str | None
    #: Whether PARTNERO_CURRENCY chose it (else it is the one most used).
    configured: bool
    #: Per currency of money commission: (transactions, partners).
    use: dict[str | None, tuple[int, int]]

    @property
    def others(self) -> dict[str | None, int]:
        """Partners per currency that is not the program's."""
        return {c: partners for c, (_, partners) in self.use.items() if c != self.currency}

    @property
    def chosen_by(self) -> str | None:
        """What chose the program's currency: "PARTNERO_CURRENCY" or "most used" (None: none yet)."""
        if self.currency is None:
            return None
        return "PARTNERO_CURRENCY" if self.configured else "most used"

    def describe(self, variable: str = "PARTNERO_CURRENCY") -> str:
        """The program's currency, and what chose it, for a person; ``variable`` is the one that
        sets it (``Program.variable("CURRENCY")``: PARTNERO_<NAME>_CURRENCY for a named program)."""
        if self.currency is None:
            return "none yet (no money commission)"
        if self.configured:
            return f"{self.currency} ({variable})"
        return f"{self.currency} (the most used; set {variable} to choose)"


def summary(conn: Connection, configured: str | None, *, program: str = DEFAULT_PROGRAM) -> Summary:
    """``program``'s currencies: ``configured`` (its setting) or the one most used, and the others."""
    use = currency_use(conn, program=program)
    currency = commissions.program_currency(configured, {c: n for c, (n, _) in use.items()})
    return Summary(currency, bool(configured), use)


def salesforce_totals(conn: Connection, partner_ids: Iterable[str], currency: str | None, *,
                      program: str = DEFAULT_PROGRAM) -> dict[str, Totals]:
    """The money totals in ``program`` of ``partner_ids`` in ``currency`` (the program's); a
    partner with none in it is left out (zero). Other currencies and programs are never added in."""
    if currency is None:
        return {}
    return {t.partner_id: t for t in totals(conn, partner_ids, program=program)
            if t.is_currency and t.currency == currency}


def chains(conn: Connection, keys: list[str], *, program: str = DEFAULT_PROGRAM) -> dict[str, list[Entry]]:
    """The entries of each transaction of ``program`` among ``keys`` that has any, as
    ``sync.rules.commissions`` reads them."""
    t = commission_entries
    found: dict[str, list[Entry]] = {}
    for chunk in db.chunks(keys, 500):
        for r in conn.execute(sa.select(t).where(t.c.program == program, t.c.transaction_key.in_(chunk))):
            bucket = Bucket(r.partner_id, r.currency, bool(r.is_currency), r.standing)
            found.setdefault(r.transaction_key, []).append(
                Entry(r.transaction_key, r.reward_ref, r.seq, r.entry_type, bucket, r.amount, r.reward_status,
                      r.occurred_at, r.event_id))
    return found


def _of(column: sa.ColumnElement, program: str | None) -> list[sa.ColumnElement]:
    """The condition of rows of ``program`` (none: None means every program)."""
    return [column == program] if program is not None else []


def _row(entry: Entry, now: datetime, program: str) -> dict[str, Any]:
    return {
        "program": program,
        "entry_type": entry.entry_type,
        "transaction_key": entry.transaction_key,
        "reward_ref": entry.reward_ref,
        "seq": entry.seq,
        "partner_id": entry.bucket.partner_id,
        "amount": entry.amount,
        "currency": entry.bucket.currency,
        "is_currency": entry.bucket.is_currency,
        "standing": entry.bucket.standing,
        "reward_status": entry.reward_status,
        "occurred_at": entry.occurred_at,
        "recorded_at": now,
        "event_id": entry.event_id,
    }
