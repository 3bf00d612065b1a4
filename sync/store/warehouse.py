"""The warehouse tables the mappings describe: creating, extending, and writing records."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from sync.core.clock import Clock, system_clock
from sync.core.errors import ConfigurationError
from sync.mapping import MappingSet, RecordChange
from sync.mapping.spec import Mapping
from sync.rules.records import RecordState, bookkeeping, from_bookkeeping, merge
from sync.store import db
from sync.store.merge import RecordKey, Target, merge_rows
from sync.store.sqltypes import FINGERPRINT, KEY, UTCDateTime, column_type

log = logging.getLogger(__name__)

#: Bookkeeping columns on every mapped table (the prefix is reserved in mapping files).
SYSTEM_COLUMNS = (
    "sync_rank",
    "sync_version",
    "sync_fingerprint",
    "sync_deleted_version",
    "sync_deleted_fingerprint",
    "sync_event_id",
    "sync_updated_at",
)


def _system_columns() -> list[sa.Column]:
    return [
        sa.Column("sync_rank", sa.SmallInteger),
        sa.Column("sync_version", UTCDateTime()),
        sa.Column("sync_fingerprint", FINGERPRINT),
        sa.Column("sync_deleted_version", UTCDateTime()),
        sa.Column("sync_deleted_fingerprint", FINGERPRINT),
        sa.Column("sync_event_id", sa.BigInteger),
        sa.Column("sync_updated_at", UTCDateTime()),
    ]


@dataclass
class Table:
    """One mapped table: its SQLAlchemy object and the mapping behind it."""

    mapping: Mapping
    table: sa.Table
    tombstone_columns: tuple[str, ...]
    data_columns: tuple[str, ...]


@dataclass
class MigrationReport:
    created_tables: list[str] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)  # "table.column"
    unmapped_columns: list[str] = field(default_factory=list)  # kept, never dropped

    def lines(self) -> list[str]:
        lines = [f"created table {t}" for t in self.created_tables]
        lines += [f"added column {c}" for c in self.added_columns]
        lines += [
            f"column {c} is no longer in any mapping: kept with its data (drop it by hand if unwanted)"
            for c in self.unmapped_columns
        ]
        return lines


class Warehouse:
    """The mapped tables, built from a ``MappingSet``."""

    def __init__(self, mappings: MappingSet, clock: Clock = system_clock):
        #: What time it is: stamps ``sync_updated_at``.
        self.clock = clock
        self.metadata = sa.MetaData()
        self.tables: dict[str, Table] = {}
        for mapping in mappings.mappings:
            if mapping.warehouse is None:
                continue
            target = mapping.warehouse
            types = target.column_types()
            columns = [sa.Column(target.key, KEY, primary_key=True)]
            columns += [sa.Column(name, column_type(kind)) for name, kind in types.items()]
            table = sa.Table(target.table, self.metadata, *columns, *_system_columns())
            self.tables[target.table] = Table(
                mapping,
                table,
                tombstone_columns=tuple(f.name for f in target.on_delete),
                data_columns=tuple(types),
            )

    # -- schema ------------------------------------------------------------------------------

    def migrate(self, conn: Connection) -> MigrationReport:
        """Create missing tables and add missing columns, on ``conn`` (the caller commits);
        never drops or retypes anything. ``sync.store.schema.migrate`` runs it under its lock.

        Raises ``ConfigurationError`` when a mapped column exists with another type.
        """
        report = MigrationReport()
        clashes = []
        dialect = conn.dialect
        inspector = sa.inspect(conn)
        existing = set(inspector.get_table_names())
        for name, mapped in self.tables.items():
            if name not in existing:
                mapped.table.create(conn)
                report.created_tables.append(name)
                continue
            found = {c["name"]: c for c in inspector.get_columns(name)}
            for column in mapped.table.columns:
                if column.name not in found:
                    _add_column(conn, name, column)
                    report.added_columns.append(f"{name}.{column.name}")
                    continue
                expected = _family(column.type.compile(dialect=dialect))
                actual = _family(found[column.name]["type"].compile(dialect=dialect))
                if expected != actual:
                    clashes.append(
                        f"{name}.{column.name} is {actual} in the database but "
                        f"{expected} in {mapped.mapping.path.name}"
                    )
            wanted = {c.name for c in mapped.table.columns}
            report.unmapped_columns += [f"{name}.{c}" for c in found if c not in wanted]
        if clashes:
            raise ConfigurationError(
                "mapped columns changed type; partnero-sync never converts or drops a column by "
                "itself. Rename the column in the mapping, or convert it by hand:\n  "
                + "\n  ".join(clashes)
            )
        for line in report.lines():
            log.info("warehouse: %s", line)
        return report

    # -- records -----------------------------------------------------------------------------

    def apply_many(self, conn: Connection, items: list[WarehouseChange]) -> dict[tuple[str, str], RecordState]:
        """Merge many changes, table by table in name order (``sync.store.merge``: one INSERT,
        locked SELECTs in key order, one UPDATE per table); returns each record's new state, by
        (table, key).

        Rows are locked (``FOR UPDATE``) in key order, so concurrent batches take turns on shared
        records without deadlocking, and each merges into what the previous one committed.
        """
        by_table: dict[str, list[WarehouseChange]] = {}
        for item in items:
            by_table.setdefault(item.change.table, []).append(item)
        states: dict[tuple[str, str], RecordState] = {}
        for name in sorted(by_table):
            mapped = self.tables[name]
            key_column = mapped.table.c[mapped.mapping.warehouse.key]
            target = Target(mapped.table, key=key_column, row_id=key_column)
            states.update(merge_rows(conn, target, by_table[name], _TableMerger(mapped, self.clock())).states)
        return states

    def states(self, conn: Connection, table: str, keys: list[str]) -> dict[str, RecordState]:
        """The stored state of each of ``keys`` that has a row in ``table`` (read, not locked)."""
        mapped = self.tables[table]
        key_column = mapped.table.c[mapped.mapping.warehouse.key]
        found = {}
        for chunk in db.chunks(sorted(set(keys)), 500):
            for row in conn.execute(sa.select(mapped.table).where(key_column.in_(chunk))):
                found[row._mapping[key_column.name]] = _state(row._mapping, mapped.data_columns)
        return found

    def live_keys(self, conn: Connection, table: str) -> set[str]:
        """The keys of ``table``'s records that are not deleted (no tombstone)."""
        mapped = self.tables[table]
        key_column = mapped.table.c[mapped.mapping.warehouse.key]
        query = sa.select(key_column).where(mapped.table.c.sync_deleted_version.is_(None))
        return set(conn.execute(query).scalars())

    def read(self, conn: Connection, table: str, key: str) -> dict[str, Any] | None:
        mapped = self.tables[table]
        key_column = mapped.table.c[mapped.mapping.warehouse.key]
        row = conn.execute(sa.select(mapped.table).where(key_column == key)).one_or_none()
        return dict(row._mapping) if row is not None else None


@dataclass(frozen=True)
class WarehouseChange:
    """A change of a warehouse record, and the delivery it comes from (its ``sync_event_id`` when it wins)."""

    change: RecordChange
    event_id: int | None


class _TableMerger:
    """One mapped table's part of the merge (``sync.store.merge.Merger``): the mapped columns, the
    tombstone columns, and which delivery's state each row holds (``sync_event_id``)."""

    def __init__(self, mapped: Table, now: datetime):
        self.mapped = mapped
        self.winners: dict[RecordKey, int | None] = {}
        self.now = now

    def record(self, item: WarehouseChange) -> RecordKey:
        return (item.change.table, item.change.key)

    def new_row(self, record: RecordKey) -> dict[str, Any]:
        return {self.mapped.mapping.warehouse.key: record[1]}

    def state(self, row: Row) -> RecordState:
        return _state(row._mapping, self.mapped.data_columns)

    def fold(self, record: RecordKey, state: RecordState, item: WarehouseChange) -> RecordState:
        merged = merge(state, item.change, self.mapped.tombstone_columns)
        if merged.version != state.version:
            self.winners[record] = item.event_id
        return merged

    def values(self, record: RecordKey, row: Row, before: RecordState, after: RecordState) -> dict[str, Any] | None:
        if after == before:
            return None
        return _row_values(after, self.winners.get(record, row._mapping["sync_event_id"]), self.now)


def _row_values(state: RecordState, event_id: int | None, now: datetime) -> dict[str, Any]:
    return {**state.values, **bookkeeping(state), "sync_event_id": event_id, "sync_updated_at": now}


def _state(row, data_columns: tuple[str, ...]) -> RecordState:
    return from_bookkeeping({c: row[c] for c in data_columns}, row)


def _add_column(conn: Connection, table: str, column: sa.Column) -> None:
    preparer = conn.dialect.identifier_preparer
    kind = column.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(
        f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {preparer.quote(column.name)} {kind}"
    ))


def _family(type_name: str) -> str:
    """A type's family, so NUMERIC(18, 6) and DECIMAL(18,6), or TEXT and VARCHAR, compare equal."""
    name = re.sub(r"\(.*\)", "", type_name).strip().upper()
    if name in ("TINYINT", "BOOL", "BOOLEAN"):
        return "boolean"
    if "INT" in name:
        return "integer"
    if name in ("NUMERIC", "DECIMAL"):
        return "decimal"
    if "CHAR" in name or "TEXT" in name or "CLOB" in name or "JSON" in name:
        return "text"
    if "TIME" in name or name == "DATE":
        return "datetime"
    if "JSON" in name:
        return "text"  # MariaDB keeps JSON as LONGTEXT
    return name.lower()
