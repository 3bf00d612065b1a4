"""The CRM outbox: the latest wanted state of each Salesforce record, committed with the warehouse.

A delivery's warehouse rows and its outbox row commit in one transaction, so a crash between the
two loses nothing. The outbox keeps one row per Salesforce record, merged by the same rules and
steps as the warehouse (``sync.store.merge``: newest state wins, deletes stick), so versions
pending at once collapse into one write. A flush sends due rows and records each one's outcome.

A record is of one program: a row is (program, object, external id), and every write and every
read a flush makes is of one program. ``entity_id`` is the Partnero id of the record, which is
also its external id unless the mapping's ``key`` makes that another value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from sync.core.clock import Clock, system_clock
from sync.core.envelope import ExactFloat
from sync.mapping import RecordChange
from sync.rules.records import RecordState, bookkeeping, from_bookkeeping, merge
from sync.settings import DEFAULT_PROGRAM
from sync.store import db
from sync.store.merge import RecordKey, Target, merge_rows
from sync.store.sqltypes import FINGERPRINT, KEY, PROGRAM, UTCDateTime

class OutboxStatus(StrEnum):
    """Where a Salesforce record of the outbox stands (``crm_outbox.status``)."""

    PENDING = "pending"  # to be sent
    WAITING = "waiting"  # Salesforce does not have its parent yet: sent again once the parent is
    SYNCED = "synced"
    #: Refused: not sent again until the record or its mapping changes, ``crm-retry``, or (for a
    #: refusal of the whole call) its ``next_attempt_at``.
    FAILED = "failed"


#: The error code of rows whose whole call failed for a passing reason (a time-out, an outage).
UNAVAILABLE = "UNAVAILABLE"
#: The error code of records whose latest delivery the mapping could not turn into fields (a
#: ``join()`` over a number...): refused without being sent, and not sent again (not even by
#: ``crm-retry``) until a newer delivery, or a replay after the mapping is fixed, gives them a state.
MAPPING_ERROR = "MAPPING_ERROR"
#: Commission changes folded in one transaction (a flush folds batch after batch until none is left).
FOLD_BATCH = 10_000

crm_outbox = sa.Table(
    "crm_outbox",
    db.metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
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
    sa.Column("status", sa.String(16), nullable=False, server_default=OutboxStatus.PENDING.value),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime()),
    sa.Column("changed_at", UTCDateTime()),
    sa.Column("salesforce_id", sa.String(18)),
    sa.Column("synced_at", UTCDateTime()),
    sa.Column("synced_generation", sa.BigInteger),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_at", UTCDateTime()),
    #: The parent a waiting record waits for, as "Object/external id" (from Salesforce's answer).
    sa.Column("waiting_for", KEY),
    #: The signature of the mapping the record was last sent with (``SalesforceTarget.signature``).
    sa.Column("sent_with", sa.String(16)),
    #: When the oldest delivery behind changes Salesforce has not received yet arrived.
    sa.Column("waiting_since", UTCDateTime()),
    #: The Bulk API 2.0 job the record travels in (``sync.store.bulk_jobs``): not due meanwhile.
    sa.Column("bulk_job", sa.String(18)),
    #: The generation the job carries (the row may change while it travels).
    sa.Column("bulk_generation", sa.BigInteger),
    #: The Partnero program the record is of.
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
    #: The Partnero id of the record (the external id may be a value the mapping's ``key`` makes of it).
    sa.Column("entity_id", KEY, nullable=False),
    sa.UniqueConstraint("program", "object", "external_id", name="uq_crm_outbox_program_record"),
    sa.Index("ix_crm_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_crm_outbox_waiting_for", "waiting_for"),
    sa.Index("ix_crm_outbox_program_object_status_id", "program", "object", "status", "id"),
    sa.Index("ix_crm_outbox_program_entity", "program", "object", "entity_id"),
    sa.Index("ix_crm_outbox_bulk_job", "bulk_job"),
)

#: Partners whose commission changed, appended by the worker, folded into the outbox by a flush.
#: Appending (rather than updating the partner's outbox row) keeps sales from contending for the
#: partner's row lock.
crm_commission_changes = sa.Table(
    "crm_commission_changes",
    db.metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("partner_id", KEY, nullable=False),
    sa.Column("changed_at", UTCDateTime(), nullable=False),
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
)


@dataclass(frozen=True)
class OutboxChange:
    """A change of one Salesforce record, for the outbox."""

    change: RecordChange
    #: The Partnero entity the record comes from.
    entity: str
    #: The fields a delete sets (the mapping's ``on_delete``): they stay once set.
    tombstone_fields: tuple[str, ...]
    #: Why the mapping could not compute the record's fields from its delivery (None: it could).
    problem: str | None
    #: When its delivery arrived (None: not known).
    arrived_at: datetime | None
    #: The Partnero id of the record (None: the change's key, the external id, is that id).
    entity_id: str | None = None


@dataclass(frozen=True)
class Pending:
    """A due outbox row, as read for sending."""

    id: int
    object: str
    external_id: str
    entity: str
    fields: dict[str, Any]
    generation: int
    attempts: int
    tombstoned: bool
    #: When the oldest delivery behind its unsent changes arrived (None: not known).
    waiting_since: datetime | None = None
    program: str = DEFAULT_PROGRAM
    #: The Partnero id of the record (None: not read).
    entity_id: str | None = None


@dataclass(frozen=True)
class RowOutcome:
    """What became of one sent row: its new status and why."""

    row: Pending
    status: str
    salesforce_id: str | None = None
    code: str | None = None
    message: str | None = None
    #: Seconds until it is tried again by itself (None: only when it changes, or crm-retry).
    retry_in: float | None = None
    #: For a waiting row, the parent it waits for, as "Object/external id".
    waiting_for: str | None = None


def wire(value: Any) -> Any:
    """A value as Salesforce's JSON wants it: numbers as numbers (exact), times in ISO 8601."""
    if isinstance(value, ExactFloat):
        return wire(Decimal(value.text))
    if isinstance(value, Decimal):
        as_float = float(value)
        # A float that prints back as the same decimal is sent as a number; otherwise as text.
        return as_float if Decimal(repr(as_float)) == value else format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


def _wire_change(change: RecordChange) -> RecordChange:
    return RecordChange(
        change.table, change.key_column, change.key, change.deleting,
        wire(change.values), wire(change.tombstone), change.version,
    )


class Outbox:
    """The ``crm_outbox`` table."""

    def __init__(self, clock: Clock = system_clock):
        #: What time it is: stamps changes, sends and refusals.
        self.clock = clock

    def apply_many(self, conn: Connection, items: list[OutboxChange], *, program: str = DEFAULT_PROGRAM) -> int:
        """Merge many changes of ``program``'s records into their outbox rows; returns how many
        rows it wrote.

        The steps are ``sync.store.merge``'s: one INSERT of the missing rows, the rows locked
        object by object in external id order, one UPDATE. What the outbox adds is
        ``_OutboxMerger``'s: a record whose newest state is one the mapping could not compute
        (``OutboxChange.problem``) is refused (``MAPPING_ERROR``, with the problem as the reason)
        instead of sent; the arrival of its deliveries dates its wait for Salesforce
        (``waiting_since``); a field the mapping no longer sends goes.
        """
        t = crm_outbox
        target = Target(t, key=t.c.external_id, row_id=t.c.id, group=t.c.object, scope=(t.c.program == program,))
        merger = _OutboxMerger(items, self.clock(), program)
        wired = [replace(item, change=_wire_change(item.change)) for item in items]
        return merge_rows(conn, target, wired, merger).written

    def note_commission_change(self, conn: Connection, partner_ids: Iterable[str], *,
                               program: str = DEFAULT_PROGRAM) -> None:
        """Note that the commission of ``program``'s ``partner_ids`` changed (a flush folds it in)."""
        rows = [{"partner_id": p, "changed_at": self.clock(), "program": program} for p in sorted(set(partner_ids))]
        if rows:
            conn.execute(crm_commission_changes.insert(), rows)

    def fold_commission_changes(self, conn: Connection, object_name: str, entity: str,
                                limit: int = FOLD_BATCH, *, program: str = DEFAULT_PROGRAM,
                                external_id_of: Callable[[str], str] = lambda partner: partner) -> int:
        """Mark ``program``'s outbox rows of partners whose commission changed as due, for up to
        ``limit`` noted changes; returns how many changes it folded (``limit``: there may be more).

        A row is found by its Partnero id (``entity_id``); a partner without one gets a row whose
        external id is ``external_id_of(partner)`` (the mapping's ``key``). Deletes exactly the
        changes it read: one committed meanwhile (even with a lower id, ids being handed out
        before commits) stays for the next fold.
        """
        t, changes = crm_outbox, crm_commission_changes
        read = conn.execute(sa.select(changes.c.id, changes.c.partner_id, changes.c.changed_at)
                            .where(changes.c.program == program).order_by(changes.c.id).limit(limit)).all()
        if not read:
            return 0
        partners = sorted({partner for _, partner, _ in read})
        noted = min(at for _, _, at in read)
        # A partner Salesforce has not heard of yet gets a row with no state: it goes out once the
        # partner's own delivery arrives, the commission total with it.
        db.insert_ignore(conn, t, [
            {"program": program, "object": object_name, "external_id": external_id_of(p), "entity_id": p,
             "entity": entity, "fields": {}, "generation": 0, "status": OutboxStatus.PENDING, "attempts": 0}
            for p in partners
        ])
        for chunk in db.chunks(partners, 500):
            conn.execute(
                t.update()
                .where(t.c.program == program, t.c.object == object_name, t.c.entity_id.in_(chunk),
                       _not_refused_by_mapping())
                # A synced record's waiting_since is empty: this change starts its wait.
                .values(**_changed(t.c.generation, self.clock()),
                        waiting_since=sa.func.coalesce(t.c.waiting_since, noted))
            )
        for chunk in db.chunks([change_id for change_id, _, _ in read], 500):
            conn.execute(changes.delete().where(changes.c.id.in_(chunk)))
        return len(read)

    def due(self, conn: Connection, object_name: str, signature: str, limit: int = 200, after: int = 0, *,
            program: str = DEFAULT_PROGRAM) -> list[Pending]:
        """Rows of ``program``'s ``object_name`` to send now, oldest first: pending or waiting whose time has
        come, and refused ones whose retry time came or whose mapping changed since (``signature``
        is the object's mapping now); none that travels in a bulk job. ``after``: only rows with
        a greater id (a bulk job reads page after page).

        One short read per status, each along the (program, object, status, id) index: a single query with
        the statuses OR-ed together would walk every synced record to find the few that are due.
        """
        t = crm_outbox
        rows = []
        for condition in self._due_conditions(object_name, signature, program):
            rows += conn.execute(sa.select(t).where(condition, t.c.id > after).order_by(t.c.id).limit(limit)).all()
        rows = sorted(rows, key=lambda r: r.id)[:limit]
        return [
            Pending(r.id, r.object, r.external_id, r.entity, dict(r.fields or {}), r.generation, r.attempts,
                    r.sync_deleted_version is not None, r.waiting_since, r.program, r.entity_id)
            for r in rows
        ]

    def count_due(self, conn: Connection, object_name: str, signature: str, limit: int,
                  upserts_only: bool = False, *, program: str = DEFAULT_PROGRAM) -> int:
        """How many rows ``due`` would give (``upserts_only``: not tombstoned), counting no further
        than ``limit`` (a bounded count: whether a bulk job pays)."""
        t = crm_outbox
        found = 0
        for condition in self._due_conditions(object_name, signature, program):
            if upserts_only:
                condition = sa.and_(condition, t.c.sync_deleted_version.is_(None))
            page = sa.select(t.c.id).where(condition).limit(limit - found).subquery()
            found += conn.execute(sa.select(sa.func.count()).select_from(page)).scalar_one()
            if found >= limit:
                break
        return found

    def _due_conditions(self, object_name: str, signature: str, program: str = DEFAULT_PROGRAM) -> list:
        """One condition per status ``due`` reads, each along the (program, object, status, id) index."""
        t = crm_outbox
        at = self.clock()
        time_come = sa.or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= at)
        wanted = {
            OutboxStatus.PENDING: time_come,
            OutboxStatus.WAITING: time_come,
            OutboxStatus.FAILED: sa.or_(t.c.next_attempt_at <= at, t.c.sent_with != signature),
        }
        return [sa.and_(t.c.program == program, t.c.object == object_name, t.c.status == status,
                        t.c.sync_version.is_not(None), t.c.bulk_job.is_(None), condition)
                for status, condition in wanted.items()]

    # -- bulk jobs: the rows one carries ------------------------------------------------------

    def join_job(self, conn: Connection, job_id: str, rows: Sequence[tuple[int, int]]) -> None:
        """Mark rows (id, generation sent) as travelling in bulk job ``job_id``: not due until
        its results are recorded."""
        statement = (crm_outbox.update().where(crm_outbox.c.id == sa.bindparam("b_id"))
                     .values(bulk_job=job_id, bulk_generation=sa.bindparam("b_generation")))
        for chunk in db.chunks(list(rows), 1000):
            conn.execute(statement, [{"b_id": i, "b_generation": g} for i, g in chunk])

    def in_job(self, conn: Connection, job_id: str, external_ids: Sequence[str] | None = None,
               limit: int = 1000) -> list[Pending]:
        """Rows still travelling in ``job_id`` (those of ``external_ids``, or up to ``limit``), as
        sent: their generation is the one the job carries."""
        t = crm_outbox
        query = sa.select(t).where(t.c.bulk_job == job_id).order_by(t.c.id)
        query = query.where(t.c.external_id.in_(external_ids)) if external_ids is not None else query.limit(limit)
        return [
            Pending(r.id, r.object, r.external_id, r.entity, {}, r.bulk_generation, r.attempts,
                    r.sync_deleted_version is not None, r.waiting_since, r.program, r.entity_id)
            for r in conn.execute(query)
        ]

    def leave_job(self, conn: Connection, job_id: str, ids: Sequence[int] | None = None) -> int:
        """Rows (of ``ids``, or all) no longer travel in ``job_id``: due again by their status."""
        t = crm_outbox
        query = t.update().where(t.c.bulk_job == job_id)
        if ids is not None:
            query = query.where(t.c.id.in_(list(ids)))
        return conn.execute(query.values(bulk_job=None, bulk_generation=None)).rowcount

    def record(self, conn: Connection, outcomes: Sequence[RowOutcome], signature: str | None) -> None:
        """Record many outcomes of one object's call in one statement, sent with mapping ``signature``.

        A row that changed since it was read keeps its new, pending version. Rows are written in
        external id order, the order every outbox write locks rows in.
        """
        if not outcomes:
            return
        t = crm_outbox
        at = self.clock()
        params = []
        for o in sorted(outcomes, key=lambda o: o.row.external_id):
            ok = o.status == OutboxStatus.SYNCED
            params.append({
                "b_id": o.row.id, "b_generation": o.row.generation, "status": o.status,
                "salesforce_id": o.salesforce_id if ok else None,
                "synced_at": at if ok else None,
                "synced_generation": o.row.generation if ok else None,
                "attempts": 0 if ok else o.row.attempts + 1,
                "next_attempt_at": None if ok or o.retry_in is None else at + timedelta(seconds=o.retry_in),
                "error_code": None if ok else (o.code or "")[:64],
                "error_message": None if ok else (o.message or "")[:2000],
                "error_at": None if ok else at,
                "waiting_for": o.waiting_for if o.status == OutboxStatus.WAITING else None,
                # Synced: nothing is waiting any more. (The row is written only if it did not change.)
                "waiting_since": None if ok else o.row.waiting_since,
                **({"sent_with": signature} if signature is not None else {}),
            })
        columns = [c for c in params[0] if not c.startswith("b_")]
        statement = (
            t.update()
            .where(t.c.id == sa.bindparam("b_id"), t.c.generation == sa.bindparam("b_generation"))
            .values({c: sa.bindparam(c) for c in columns})
        )
        conn.execute(statement, params)

    def postpone(self, conn: Connection, rows: Sequence[Pending], reason: str) -> None:
        """A whole call failed for a passing reason (time-out, outage): these rows are due again
        at the next flush (whose own backoff decides when), with the reason shown meanwhile."""
        self.record(conn, [RowOutcome(r, OutboxStatus.PENDING, code=UNAVAILABLE, message=reason) for r in rows],
                    signature=None)

    def wake_children_of(self, conn: Connection, parents: Iterable[tuple[str, str]], *,
                         program: str = DEFAULT_PROGRAM) -> int:
        """``program``'s records waiting for one of ``parents`` ((object, external id) just synced):
        try them now."""
        keys = sorted({f"{obj}/{external_id}" for obj, external_id in parents})
        t = crm_outbox
        woken = 0
        for chunk in db.chunks(keys, 500):
            woken += conn.execute(
                t.update().where(t.c.program == program, t.c.status == OutboxStatus.WAITING, t.c.waiting_for.in_(chunk))
                .values(next_attempt_at=None)
            ).rowcount
        return woken

    def retry_failed(self, conn: Connection, object_name: str | None = None, *, program: str | None = None) -> int:
        """Make failed (and waiting) rows (of ``program``; None: of every program) due again:
        ``partnero-sync crm-retry``. Records the mapping could not compute (``MAPPING_ERROR``) stay
        refused: only a delivery or a replay gives them something to send."""
        t = crm_outbox
        query = t.update().where(t.c.status.in_((OutboxStatus.FAILED, OutboxStatus.WAITING)), _not_refused_by_mapping(),
                                 *_of(program))
        if object_name:
            query = query.where(t.c.object == object_name)
        return conn.execute(query.values(status=OutboxStatus.PENDING, next_attempt_at=None, attempts=0)).rowcount

    def refused_by_mapping(self, conn: Connection, object_name: str | None = None, *,
                           program: str | None = None) -> int:
        """How many records (of ``program``; None: of every program) are refused because the
        mapping could not compute them."""
        t = crm_outbox
        query = (sa.select(sa.func.count()).select_from(t)
                 .where(t.c.status == OutboxStatus.FAILED, t.c.error_code == MAPPING_ERROR, *_of(program)))
        if object_name:
            query = query.where(t.c.object == object_name)
        return conn.execute(query).scalar_one()

    def counts(self, conn: Connection, *, program: str | None = None) -> dict[str, dict[str, int]]:
        """Records per object and status (of ``program``; None: of every program, added up)."""
        t = crm_outbox
        found: dict[str, dict[str, int]] = {}
        query = sa.select(t.c.object, t.c.status, sa.func.count()).where(t.c.sync_version.is_not(None), *_of(program)) \
            .group_by(t.c.object, t.c.status)
        for obj, status, count in conn.execute(query):
            found.setdefault(obj, dict.fromkeys(OutboxStatus, 0))[status] = count
        return found

    def oldest_waits(self, conn: Connection) -> dict[str, datetime]:
        """Since when the oldest record still to be sent (pending or waiting for a parent) has
        waited for Salesforce (``waiting_since``), by program; a program with none is left out."""
        t = crm_outbox
        query = (sa.select(t.c.program, sa.func.min(t.c.waiting_since))
                 .where(t.c.status.in_((OutboxStatus.PENDING, OutboxStatus.WAITING)), t.c.sync_version.is_not(None),
                        t.c.waiting_since.is_not(None))
                 .group_by(t.c.program))
        return {program: since for program, since in conn.execute(query) if since is not None}

    def refusal_codes(self, conn: Connection, *, program: str | None = None) -> dict[str, dict[str, int]]:
        """Refused records per object and error code (of ``program``; None: of every program)."""
        t = crm_outbox
        found: dict[str, dict[str, int]] = {}
        query = sa.select(t.c.object, t.c.error_code, sa.func.count()) \
            .where(t.c.status == OutboxStatus.FAILED, *_of(program)).group_by(t.c.object, t.c.error_code)
        for obj, code, count in conn.execute(query):
            found.setdefault(obj, {})[code or "unknown"] = count
        return found

    def last_synced_at(self, conn: Connection, *, program: str | None = None) -> datetime | None:
        """When Salesforce last accepted a record (of ``program``; None: of any program)."""
        return conn.execute(sa.select(sa.func.max(crm_outbox.c.synced_at)).where(*_of(program))).scalar()

    def errors(self, conn: Connection, limit: int = 100, *, program: str | None = None) -> list[dict[str, Any]]:
        """The records refused or waiting (of ``program``; None: of every program), newest error
        first, each with its program."""
        t = crm_outbox
        rows = conn.execute(
            sa.select(t.c.object, t.c.external_id, t.c.status, t.c.error_code, t.c.error_message, t.c.error_at,
                      t.c.attempts, t.c.next_attempt_at, t.c.program)
            .where(t.c.status.in_((OutboxStatus.FAILED, OutboxStatus.WAITING)), *_of(program))
            .order_by(t.c.error_at.desc())
            .limit(limit)
        ).all()
        return [dict(r._mapping) for r in rows]

    def read(self, conn: Connection, object_name: str, external_id: str, *,
             program: str = DEFAULT_PROGRAM) -> dict[str, Any] | None:
        """The outbox row of one Salesforce record of ``program``: what it should say and what became of it."""
        t = crm_outbox
        row = conn.execute(
            sa.select(t).where(t.c.program == program, t.c.object == object_name, t.c.external_id == external_id)
        ).one_or_none()
        return dict(row._mapping) if row is not None else None

    def backlog(self, conn: Connection, *, program: str | None = None) -> int:
        """Records waiting to be sent, and partners whose commission changed and is still to be
        sent (of ``program``; None: of every program)."""
        t, changes = crm_outbox, crm_commission_changes
        records = conn.execute(
            sa.select(sa.func.count()).select_from(t)
            .where(t.c.status.in_((OutboxStatus.PENDING, OutboxStatus.WAITING)), t.c.sync_version.is_not(None),
                   *_of(program))
        ).scalar_one()
        noted = sa.select(sa.func.count()).select_from(changes).where(*_of(program, changes))
        return records + conn.execute(noted).scalar_one()


#: No change of the batch holds the record (it had only older deliveries).
_NONE_HOLDS = object()


class _OutboxMerger:
    """The outbox's part of the merge (``sync.store.merge.Merger``): refusals by ``MAPPING_ERROR``,
    ``waiting_since``, and dropping the fields the mapping no longer sends."""

    def __init__(self, items: list[OutboxChange], now: datetime, program: str):
        #: When this batch changes the records.
        self.now = now
        self.program = program
        self.entities = {self.record(item): item.entity for item in items}
        self.entity_ids = {self.record(item): item.entity_id or item.change.key for item in items}
        self.arrived: dict[RecordKey, datetime] = {}
        for item in items:
            k, at = self.record(item), item.arrived_at
            if at is not None and (k not in self.arrived or at < self.arrived[k]):
                self.arrived[k] = at
        #: The problem of the change that holds each record (None: the mapping computed it).
        self.problems: dict[RecordKey, object] = {}

    def record(self, item: OutboxChange) -> RecordKey:
        return (item.change.table, item.change.key)

    def new_row(self, record: RecordKey) -> dict[str, Any]:
        return {"program": self.program, "object": record[0], "external_id": record[1],
                "entity_id": self.entity_ids[record], "entity": self.entities[record], "fields": {},
                "generation": 0, "status": OutboxStatus.PENDING, "attempts": 0}

    def state(self, row: Row) -> RecordState:
        return _state(row)

    def fold(self, record: RecordKey, state: RecordState, item: OutboxChange) -> RecordState:
        change, tomb = item.change, item.tombstone_fields
        if state.version is None or change.version >= state.version:
            self.problems[record] = item.problem
        merged = merge(state, change, tomb)
        # The record says what the mapping names now: a field it no longer sends goes.
        kept = {name: v for name, v in merged.values.items() if name in change.values or name in tomb}
        return replace(merged, values=kept)

    def values(self, record: RecordKey, row: Row, before: RecordState, after: RecordState) -> dict[str, Any] | None:
        refusal = _refusal(row, self.problems.get(record, _NONE_HOLDS), after == before)
        if refusal is _UNCHANGED:
            return None
        since = row.waiting_since  # empty once synced: these changes start a new wait
        if record in self.arrived and (since is None or self.arrived[record] < since):
            since = self.arrived[record]
        values = {"fields": after.values, **bookkeeping(after), **_changed(row.generation, self.now),
                  # Every row sets the same columns (one statement); the error stays unless it changes.
                  "error_code": row.error_code, "error_message": row.error_message, "error_at": row.error_at,
                  "sent_with": row.sent_with, "waiting_since": since}
        if refusal is not None:
            values.update(status=OutboxStatus.FAILED, error_code=MAPPING_ERROR, error_message=refusal,
                          error_at=self.now, sent_with=None)
        elif _refused_by_mapping(row):
            values.update(error_code=None, error_message=None, error_at=None)
        return values


#: ``_refusal``'s answer when the row is to be left as it is.
_UNCHANGED = object()


def _refusal(row: Row, problem: object, unchanged: bool) -> Any:
    """Why the record is refused after the batch (None: it is not), or ``_UNCHANGED``: nothing to write."""
    was_refused = _refused_by_mapping(row)
    if problem is _NONE_HOLDS:  # only older deliveries: at most a tombstone moved
        if unchanged:
            return _UNCHANGED
        return row.error_message if was_refused else None
    if problem is None:  # a state the mapping computed holds the record
        return _UNCHANGED if unchanged and not was_refused else None
    refusal = str(problem)[:2000]  # a state the mapping could not compute holds the record
    if unchanged and was_refused and row.error_message == refusal:
        return _UNCHANGED
    return refusal


def _refused_by_mapping(row: Row) -> bool:
    return row.status == OutboxStatus.FAILED and row.error_code == MAPPING_ERROR


def _of(program: str | None, table: sa.Table = crm_outbox) -> list[sa.ColumnElement]:
    """The condition of ``table``'s rows of ``program`` (none: None means every program)."""
    return [table.c.program == program] if program is not None else []


def _not_refused_by_mapping():
    """Rows other than records refused because the mapping could not compute them: sending
    those again would send a state the mapping never produced."""
    t = crm_outbox
    return sa.or_(t.c.status != OutboxStatus.FAILED, t.c.error_code.is_(None), t.c.error_code != MAPPING_ERROR)


def _changed(generation, at: datetime) -> dict[str, Any]:
    return {"generation": generation + 1, "status": OutboxStatus.PENDING, "attempts": 0, "next_attempt_at": None,
            "changed_at": at}


def _state(row) -> RecordState:
    return from_bookkeeping(dict(row.fields or {}), row._mapping)
