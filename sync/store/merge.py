"""Merging a batch of record changes into their rows by version: the steps every merged table takes.

One INSERT that skips existing rows makes every record's row exist; ``SELECT ... FOR UPDATE``
locks them, group by group in key order, 500 keys a statement; each change merges into its
record's state (``sync.rules.records.merge``, through the table's ``Merger``); one executemany
UPDATE writes the rows the ``Merger`` says changed. Rows locked in one global order are why
concurrent batches take turns on shared records instead of deadlocking. The caller's transaction
holds the locks until it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from sync.rules.records import RecordState
from sync.store import db

#: A record: (group, key). The group is what splits one table's records (the outbox's object), or
#: the table's name for a table that is one group.
RecordKey = tuple[str, str]
#: The bound parameter that names the row each UPDATE writes.
_ROW = "b_key"

Item = TypeVar("Item", contravariant=True)


@dataclass(frozen=True)
class Target:
    """Where a merged table keeps its records."""

    table: sa.Table
    #: A record's key within its group.
    key: sa.Column
    #: What the UPDATE finds a row by (a key the row is known by: ``key``, or the primary key).
    row_id: sa.Column
    #: The column that holds a record's group; None: the table is one group.
    group: sa.Column | None = None
    #: Conditions every row of the batch meets (its program: ``table.c.program == "affiliate"``),
    #: applied to the locking SELECT and to the UPDATE, so a table keyed by (program, key) merges
    #: and locks only that program's rows.
    scope: tuple[sa.ColumnElement, ...] = ()


class Merger(Protocol[Item]):
    """What one table adds to the steps, for one batch: may note what it needs while folding."""

    def record(self, item: Item) -> RecordKey:
        """The record ``item`` changes."""

    def new_row(self, record: RecordKey) -> dict[str, Any]:
        """The row inserted for a record that has none yet."""

    def state(self, row: Row) -> RecordState:
        """The merged state a locked row holds."""

    def fold(self, record: RecordKey, state: RecordState, item: Item) -> RecordState:
        """The record's state after ``item``."""

    def values(self, record: RecordKey, row: Row, before: RecordState, after: RecordState) -> dict[str, Any] | None:
        """The columns to write to the record's row (the same columns for every row), or None to leave it."""


@dataclass(frozen=True)
class Merged:
    #: Every record of the batch, in its merged state.
    states: dict[RecordKey, RecordState]
    #: How many rows the UPDATE wrote.
    written: int


def merge_rows(conn: Connection, target: Target, items: Sequence[Item], merger: Merger[Item]) -> Merged:
    """Merge ``items`` into their rows of ``target``: insert, lock, merge, one UPDATE (see the module)."""
    records = sorted({merger.record(item) for item in items})
    db.insert_ignore(conn, target.table, [merger.new_row(record) for record in records])
    rows = _lock(conn, target, records)
    before = {record: merger.state(rows[record]) for record in records}
    after = dict(before)
    for item in items:
        record = merger.record(item)
        after[record] = merger.fold(record, after[record], item)
    updates = []
    for record in records:
        values = merger.values(record, rows[record], before[record], after[record])
        if values is not None:
            updates.append(values | {_ROW: rows[record]._mapping[target.row_id.name]})
    if updates:
        columns = [c for c in updates[0] if c != _ROW]
        # A row id that is the whole primary key finds the row by itself. The scope is left out then:
        # PostgreSQL plans a prepared UPDATE once for every row, and with the program in it that
        # plan may walk an index by program (every row of it) instead of the primary key.
        alone = list(target.table.primary_key.columns) == [target.row_id]
        statement = target.table.update().where(*(() if alone else target.scope),
                                                target.row_id == sa.bindparam(_ROW))
        conn.execute(statement.values({c: sa.bindparam(c) for c in columns}), updates)
    return Merged(after, len(updates))


def _lock(conn: Connection, target: Target, records: list[RecordKey]) -> dict[RecordKey, Row]:
    """The rows of ``records`` (sorted), locked group by group in key order."""
    rows = {}
    for group in sorted({group for group, _ in records}):
        keys = [key for g, key in records if g == group]
        in_group = [target.group == group] if target.group is not None else []
        for chunk in db.chunks(keys, 500):
            query = (sa.select(target.table).where(*target.scope, *in_group, target.key.in_(chunk))
                     .order_by(target.key).with_for_update())
            rows.update({(group, row._mapping[target.key.name]): row for row in conn.execute(query)})
    return rows
