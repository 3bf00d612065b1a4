"""The warehouse tables the mappings describe: creating, extending, and writing records.

A record's identity is its program and its id: every mapped table has a ``program`` column, and
its primary key is (program, the mapping's key). Partner ``p1`` of one program and ``p1`` of
another are two rows, never merged; every write and read is of one program. Programs with mappings
of their own (their own MAPPINGS_DIR) share the tables their mappings name: such a table has the
columns of all of them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from sync.core.clock import Clock, system_clock
from sync.core.errors import ConfigurationError
from sync.mapping import MappingSet, RecordChange
from sync.mapping.spec import Mapping
from sync.rules.records import RecordState, bookkeeping, from_bookkeeping, merge
from sync.settings import DEFAULT_PROGRAM
from sync.store import db
from sync.store.merge import RecordKey, Target, merge_rows
from sync.store.sqltypes import FINGERPRINT, KEY, PROGRAM, UTCDateTime, column_type

log = logging.getLogger(__name__)

#: The column of every mapped table that holds a record's program (a mapping may not name one so).
PROGRAM_COLUMN = "program"

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
    """One mapped table: its SQLAlchemy object and the mappings behind it (one per program that
    has its own mappings; ``mapping`` is the first)."""

    mapping: Mapping
    table: sa.Table
    tombstone_columns: tuple[str, ...]
    data_columns: tuple[str, ...]
    mappings: tuple[Mapping, ...] = ()

    @property
    def key(self) -> str:
        """The key column: a record is (program, key)."""
        return self.mapping.warehouse.key


@dataclass
class MigrationReport:
    created_tables: list[str] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)  # "table.column"
    unmapped_columns: list[str] = field(default_factory=list)  # kept, never dropped
    rekeyed_tables: list[str] = field(default_factory=list)  # "table (program, key)"

    def lines(self) -> list[str]:
        lines = [f"created table {t}" for t in self.created_tables]
        lines += [f"re-keyed table {t}: its rows are the program {DEFAULT_PROGRAM}'s" for t in self.rekeyed_tables]
        lines += [f"added column {c}" for c in self.added_columns]
        lines += [
            f"column {c} is no longer in any mapping: kept with its data (drop it by hand if unwanted)"
            for c in self.unmapped_columns
        ]
        return lines


class Warehouse:
    """The mapped tables, built from a ``MappingSet``, or several (one per program with mappings
    of its own)."""

    def __init__(self, mappings: MappingSet | Iterable[MappingSet], clock: Clock = system_clock):
        """Raises ``ConfigurationError`` when mappings of a shared table disagree: two key
        columns, or one column with two types (naming both files), or name a column ``program``."""
        #: What time it is: stamps ``sync_updated_at``.
        self.clock = clock
        self.metadata = sa.MetaData()
        self.tables: dict[str, Table] = {}
        sets = [mappings] if isinstance(mappings, MappingSet) else list(mappings)
        for name, found in _by_table(sets).items():
            self.tables[name] = _table(self.metadata, name, found)

    # -- schema ------------------------------------------------------------------------------

    def migrate(self, conn: Connection) -> MigrationReport:
        """Create missing tables and add missing columns, on ``conn`` (the caller commits);
        never drops or retypes anything. ``sync.store.schema.migrate`` runs it under its lock.

        A table made before programs (keyed by the mapping's key alone) gains the ``program``
        column, its rows the program ``default``'s, and is keyed by (program, key): PostgreSQL and
        MariaDB alter it in place, SQLite copies it (every column, unmapped ones too, with its data).

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
            if inspector.get_pk_constraint(name)["constrained_columns"] != [PROGRAM_COLUMN, mapped.key]:
                _rekey(conn, inspector, mapped)
                report.rekeyed_tables.append(f"{name} ({PROGRAM_COLUMN}, {mapped.key})")
                inspector = sa.inspect(conn)
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

    def apply_many(self, conn: Connection, items: list[WarehouseChange], *,
                   program: str = DEFAULT_PROGRAM) -> dict[tuple[str, str], RecordState]:
        """Merge many changes of ``program``'s records, table by table in name order
        (``sync.store.merge``: one INSERT, locked SELECTs in key order, one UPDATE per table);
        returns each record's new state, by (table, key). Rows of other programs are neither
        read, locked nor written.

        Rows are locked (``FOR UPDATE``) in key order, so concurrent batches take turns on shared
        records without deadlocking, and each merges into what the previous one committed.
        """
        by_table: dict[str, list[WarehouseChange]] = {}
        for item in items:
            by_table.setdefault(item.change.table, []).append(item)
        states: dict[tuple[str, str], RecordState] = {}
        for name in sorted(by_table):
            mapped = self.tables[name]
            key_column = mapped.table.c[mapped.key]
            target = Target(mapped.table, key=key_column, row_id=key_column, scope=(_of(mapped, program),))
            merger = _TableMerger(mapped, self.clock(), program)
            states.update(merge_rows(conn, target, by_table[name], merger).states)
        return states

    def states(self, conn: Connection, table: str, keys: list[str], *,
               program: str = DEFAULT_PROGRAM) -> dict[str, RecordState]:
        """The stored state of each of ``keys`` that has a row of ``program`` in ``table`` (read, not locked)."""
        mapped = self.tables[table]
        key_column = mapped.table.c[mapped.key]
        found = {}
        for chunk in db.chunks(sorted(set(keys)), 500):
            for row in conn.execute(sa.select(mapped.table).where(_of(mapped, program), key_column.in_(chunk))):
                found[row._mapping[key_column.name]] = _state(row._mapping, mapped.data_columns)
        return found

    def live_keys(self, conn: Connection, table: str, *, program: str = DEFAULT_PROGRAM) -> set[str]:
        """The keys of ``program``'s records in ``table`` that are not deleted (no tombstone)."""
        mapped = self.tables[table]
        query = sa.select(mapped.table.c[mapped.key]).where(_of(mapped, program),
                                                             mapped.table.c.sync_deleted_version.is_(None))
        return set(conn.execute(query).scalars())

    def read(self, conn: Connection, table: str, key: str, *, program: str = DEFAULT_PROGRAM) -> dict[str, Any] | None:
        """The row of ``program``'s record ``key`` in ``table`` (None: there is none)."""
        mapped = self.tables[table]
        query = sa.select(mapped.table).where(_of(mapped, program), mapped.table.c[mapped.key] == key)
        row = conn.execute(query).one_or_none()
        return dict(row._mapping) if row is not None else None


@dataclass(frozen=True)
class WarehouseChange:
    """A change of a warehouse record, and the delivery it comes from (its ``sync_event_id`` when it wins)."""

    change: RecordChange
    event_id: int | None


class _TableMerger:
    """One mapped table's part of the merge (``sync.store.merge.Merger``): the mapped columns, the
    tombstone columns, and which delivery's state each row holds (``sync_event_id``)."""

    def __init__(self, mapped: Table, now: datetime, program: str):
        self.mapped = mapped
        self.winners: dict[RecordKey, int | None] = {}
        self.now = now
        self.program = program

    def record(self, item: WarehouseChange) -> RecordKey:
        return (item.change.table, item.change.key)

    def new_row(self, record: RecordKey) -> dict[str, Any]:
        return {PROGRAM_COLUMN: self.program, self.mapped.key: record[1]}

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


def _of(mapped: Table, program: str) -> sa.ColumnElement:
    """The condition of ``mapped``'s rows of ``program``."""
    return mapped.table.c[PROGRAM_COLUMN] == program


def _by_table(sets: list[MappingSet]) -> dict[str, list[Mapping]]:
    """The mappings with a warehouse target, by the table they name, each once."""
    found: dict[str, list[Mapping]] = {}
    for mappings in sets:
        for mapping in mappings.mappings:
            if mapping.warehouse is None:
                continue
            same = found.setdefault(mapping.warehouse.table, [])
            if not any(m is mapping for m in same):
                same.append(mapping)
    return found


def _table(metadata: sa.MetaData, name: str, mappings: list[Mapping]) -> Table:
    """Table ``name`` as ``mappings`` (one or more files) describe it: the union of their columns."""
    first = mappings[0]
    key = first.warehouse.key
    types: dict[str, tuple[str, Path]] = {}
    tombstones: list[str] = []
    for mapping in mappings:
        target = mapping.warehouse
        if target.key != key:
            raise ConfigurationError(f"table {name} has two key columns: {key} in {first.path} and "
                                     f"{target.key} in {mapping.path}; mappings of one table must share their key")
        for column, kind in {key: "string", **target.column_types()}.items():
            if column == PROGRAM_COLUMN:
                raise ConfigurationError(f"{mapping.path}: the warehouse column {PROGRAM_COLUMN} of table {name} is "
                                         "partnero-sync's (it holds each record's program): name the column otherwise")
            seen = types.setdefault(column, (kind, mapping.path))
            if type(column_type(seen[0])) is not type(column_type(kind)):
                raise ConfigurationError(f"table {name}: column {column} is {seen[0]} in {seen[1]} but {kind} in "
                                         f"{mapping.path}; give it one type, or name one of them otherwise")
        tombstones += [f.name for f in target.on_delete if f.name not in tombstones]
    data = [column for column in types if column != key]
    columns = [sa.Column(PROGRAM_COLUMN, PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
               sa.Column(key, KEY, nullable=False)]
    columns += [sa.Column(column, column_type(types[column][0])) for column in data]
    table = sa.Table(name, metadata, *columns, *_system_columns(), sa.PrimaryKeyConstraint(PROGRAM_COLUMN, key))
    return Table(first, table, tombstone_columns=tuple(tombstones), data_columns=tuple(data),
                 mappings=tuple(mappings))


def _rekey(conn: Connection, inspector, mapped: Table) -> None:
    """Give a table made before programs its ``program`` column (existing rows: the program
    ``default``'s) and the primary key (program, key), keeping every column and row."""
    name, key = mapped.table.name, mapped.key
    if conn.dialect.name == "sqlite":  # SQLite cannot change a primary key: the table is copied
        _copy_rekeyed(conn, inspector, name, key)
        return
    q = conn.dialect.identifier_preparer.quote
    found = {c["name"] for c in inspector.get_columns(name)}
    steps = []
    if PROGRAM_COLUMN not in found:
        kind = PROGRAM.compile(dialect=conn.dialect)
        steps.append(f"ADD COLUMN {q(PROGRAM_COLUMN)} {kind} DEFAULT '{DEFAULT_PROGRAM}' NOT NULL")
    pk = inspector.get_pk_constraint(name)
    if pk["constrained_columns"]:
        steps.append("DROP PRIMARY KEY" if conn.dialect.name in ("mysql", "mariadb")
                     else f"DROP CONSTRAINT {q(pk['name'])}")
    steps.append(f"ADD PRIMARY KEY ({q(PROGRAM_COLUMN)}, {q(key)})")
    conn.execute(sa.text(f"ALTER TABLE {q(name)} " + ", ".join(steps)))


def _copy_rekeyed(conn: Connection, inspector, name: str, key: str) -> None:
    """SQLite's re-keying: a copy with the program column and the new key, the rows moved, the
    old table dropped and the copy renamed."""
    q = conn.dialect.identifier_preparer.quote
    reflected = inspector.get_columns(name)
    columns = [sa.Column(c["name"], c["type"], nullable=c["nullable"] and c["name"] != key,
                         server_default=sa.text(c["default"]) if c.get("default") is not None else None)
               for c in reflected]
    names = [c["name"] for c in reflected]
    if PROGRAM_COLUMN not in names:
        columns.append(sa.Column(PROGRAM_COLUMN, PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM))
    copy = sa.Table(f"{name}__programs", sa.MetaData(), *columns, sa.PrimaryKeyConstraint(PROGRAM_COLUMN, key))
    copy.create(conn)
    listed = ", ".join(q(n) for n in names)
    conn.execute(sa.text(f"INSERT INTO {q(copy.name)} ({listed}) SELECT {listed} FROM {q(name)}"))
    conn.execute(sa.text(f"DROP TABLE {q(name)}"))
    conn.execute(sa.text(f"ALTER TABLE {q(copy.name)} RENAME TO {q(name)}"))


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
