"""The inbox: every genuine delivery, stored once, with what became of it.

A row is written before Partnero gets its 2xx; the fingerprint (sha256 of the raw body, with the
program's name in front for a program other than ``default``) is UNIQUE, so the same bytes
delivered to the same program again find the row already there, while the same bytes sent to two
programs are two deliveries.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync.core.clock import Clock, system_clock
from sync.settings import DEFAULT_PROGRAM
from sync.store.db import chunks, metadata, transaction
from sync.store.sqltypes import BODY, KEY, PROGRAM, UTCDateTime

class DeliveryStatus(StrEnum):
    """Where an inbox row stands (``webhook_events.status``)."""

    PENDING = "pending"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


#: Statuses whose rows are finished with: nothing will process them again unless replayed.
DONE = (DeliveryStatus.PROCESSED, DeliveryStatus.IGNORED)
#: The body of a delivery whose raw body ``partnero-sync prune`` dropped (its row and fingerprint
#: stay, so a retry of the same bytes is still recognised). No stored delivery is empty otherwise:
#: the receiver accepts only JSON objects.
PRUNED_BODY = b""
#: Rows a worker claims at a time (one SQL transaction applies them).
CLAIM_BATCH = 500
#: How long a claim holds a row: far longer than applying a batch takes, short enough that the
#: rows of a worker killed mid-batch are taken up again soon.
CLAIM_LEASE = timedelta(minutes=2)
MAX_CLAIM_LEASE = timedelta(hours=1)
#: A row whose claims lapsed (or ran out of time) this often is claimed alone (see ``Inbox.claim``).
ALONE_AFTER = 2


class RequeueAnswer(StrEnum):
    """What ``Inbox.requeue`` found: a done or failed row set back to pending; a row already pending;
    a pruned one (nothing to apply); one another transaction holds (left as it is)."""

    REQUEUED = "requeued"
    ALREADY_PENDING = "already pending"
    PRUNED = "pruned"
    BUSY = "busy"


class ReceiptStatus(StrEnum):
    """What the receiver answers for a delivery it was given (``sync.pipeline.intake.Receipt``): stored,
    to be applied; stored already (the same bytes: a retry); or stored as ignored (no mapping
    handles its event)."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("body", BODY, nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("processed_at", UTCDateTime()),
    #: The record the delivery is about (the mapping's identity), when it could be read.
    sa.Column("entity_id", KEY),
    #: A worker holds this pending row until then (see ``Inbox.claim``); None: nobody does.
    sa.Column("claimed_until", UTCDateTime()),
    #: When an operator last asked, from ``/ops``, for the row to be applied again (``Inbox.requeue``).
    sa.Column("replay_asked_at", UTCDateTime()),
    #: The Partnero program it was sent to: "default" without PARTNERO_PROGRAMS (``sync.settings``).
    sa.Column("program", PROGRAM, nullable=False, server_default=DEFAULT_PROGRAM),
    sa.Index("ix_webhook_events_status_received", "status", "received_at"),
    sa.Index("ix_webhook_events_entity", "entity_id"),
    sa.Index("ix_webhook_events_status_id", "status", "id"),
    sa.Index("ix_webhook_events_program_status_id", "program", "status", "id"),
)


_EVENT_COLUMNS = (
    webhook_events.c.id,
    webhook_events.c.event_type,
    webhook_events.c.body,
    webhook_events.c.status,
    webhook_events.c.attempts,
    webhook_events.c.received_at,
    webhook_events.c.fingerprint,
    webhook_events.c.entity_id,
    webhook_events.c.program,
)


def _matching(query, since: datetime | None = None, event_type: str | None = None, status: str | None = None,
              program: str | None = None):
    """``query`` narrowed to rows received from ``since`` on, of ``event_type``, in ``status``, of
    ``program`` (None: of every program)."""
    t = webhook_events
    if program is not None:
        query = query.where(t.c.program == program)
    if since is not None:
        query = query.where(t.c.received_at >= since)
    if event_type is not None:
        query = query.where(t.c.event_type == event_type)
    if status is not None:
        query = query.where(t.c.status == status)
    return query


def _prunable(query, before: datetime):
    """``query`` narrowed to done rows received before ``before`` that still have their body."""
    t = webhook_events
    return query.where(t.c.status.in_(DONE), t.c.received_at < before, t.c.body != PRUNED_BODY)


def _unheld(now: datetime):
    """The condition of pending rows that no worker holds at ``now`` (see ``Inbox.claim``)."""
    t = webhook_events
    held = sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)
    return sa.and_(t.c.status == DeliveryStatus.PENDING, held)


def _claim(query, limit: int):
    """The first ``limit`` rows of ``query`` by id, locked for this transaction; rows another
    transaction holds are skipped (SQLite, which locks the whole database, ignores this)."""
    return query.order_by(webhook_events.c.id).limit(limit).with_for_update(skip_locked=True)


#: The inbox insert on PostgreSQL: an array per column that differs between rows, a value for
#: those ``store_many`` gives every row alike; rows in the order given (sorted by fingerprint).
_PER_ROW = ("fingerprint", "event_type", "body", "status", "entity_id", "program")
_ALIKE = ("received_at", "attempts", "claimed_until")
_UNNEST_INSERT = sa.text(
    "INSERT INTO webhook_events (fingerprint, event_type, body, received_at, status, attempts, entity_id,"
    " claimed_until, program)"
    " SELECT u.fingerprint, u.event_type, u.body, :received_at, u.status, :attempts, u.entity_id, :claimed_until,"
    " u.program"
    " FROM unnest(CAST(:fingerprint AS varchar[]), CAST(:event_type AS varchar[]), CAST(:body AS bytea[]),"
    " CAST(:status AS varchar[]), CAST(:entity_id AS varchar[]), CAST(:program AS varchar[]))"
    " WITH ORDINALITY AS u(fingerprint, event_type, body, status, entity_id, program, n)"
    " ORDER BY u.n"
    " ON CONFLICT (fingerprint) DO NOTHING"
    " RETURNING fingerprint, id, status"
).bindparams(sa.bindparam("received_at", type_=UTCDateTime()), sa.bindparam("claimed_until", type_=UTCDateTime()))


def fingerprint(body: bytes, program: str = DEFAULT_PROGRAM) -> str:
    """What makes a delivery the same delivery: its bytes, sent to its program.

    The program ``default``'s is sha256 of the body alone, as it was before programs, so the rows
    of a deployment that upgrades stay valid; another program's has the program's name in front.
    """
    if program == DEFAULT_PROGRAM:
        return hashlib.sha256(body).hexdigest()
    return hashlib.sha256(b"program:" + program.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """A verified delivery on its way into the inbox."""

    body: bytes
    event_type: str
    status: DeliveryStatus  # PENDING for events we handle, IGNORED for the rest
    entity_id: str | None = None
    #: The program whose webhook it came to.
    program: str = DEFAULT_PROGRAM

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.body, self.program)


@dataclass(frozen=True)
class Stored:
    """What storing one delivery came to: its row id, and whether this call created it."""

    id: int
    created: bool
    status: str


@dataclass(frozen=True)
class StoredDelivery:
    """A stored delivery: an inbox row with its raw body, as the processor applies it."""

    id: int
    event_type: str
    body: bytes
    status: str
    attempts: int
    received_at: datetime
    fingerprint: str
    entity_id: str | None = None
    program: str = DEFAULT_PROGRAM

    @property
    def pruned(self) -> bool:
        """Whether the raw body was dropped by ``prune`` (it can no longer be replayed)."""
        return self.body == PRUNED_BODY


@dataclass(frozen=True)
class Requeued:
    """One batch of ``Inbox.requeue_failed``: the rows set back to pending, as (id, event type),
    and those left failed, as (id, why)."""

    rows: list[tuple[int, str]]
    skipped: list[tuple[int, str]]


@dataclass(frozen=True)
class Pruned:
    """Raw bodies dropped by ``Inbox.prune`` (rows) and their size (bytes)."""

    rows: int = 0
    bytes: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.rows + other.rows, self.bytes + other.bytes)


@dataclass(frozen=True)
class InboxRow:
    """An inbox row's facts, without its body: what the operator's pages list."""

    id: int
    event_type: str
    status: str
    attempts: int
    received_at: datetime
    fingerprint: str
    entity_id: str | None
    last_error: str | None
    processed_at: datetime | None
    #: When a replay was last asked from ``/ops`` (None: never).
    replay_asked_at: datetime | None = None
    program: str = DEFAULT_PROGRAM


_ROW_COLUMNS = (
    webhook_events.c.id,
    webhook_events.c.event_type,
    webhook_events.c.status,
    webhook_events.c.attempts,
    webhook_events.c.received_at,
    webhook_events.c.fingerprint,
    webhook_events.c.entity_id,
    webhook_events.c.last_error,
    webhook_events.c.processed_at,
    webhook_events.c.replay_asked_at,
    webhook_events.c.program,
)


@dataclass(frozen=True)
class Backlog:
    """What the public health check tells of the inbox (``Inbox.backlog``)."""

    pending: int
    failed: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True)
class InboxSummary:
    """The whole inbox at a glance (``Inbox.summary``): rows per status, the oldest pending and the
    last processed delivery."""

    counts: dict[str, int]
    oldest_pending_at: datetime | None
    last_processed_at: datetime | None


class Inbox:
    """The ``webhook_events`` table, behind the few operations the service needs."""

    def __init__(self, engine: Engine, clock: Clock = system_clock, programs: Sequence[str] | None = None):
        self.engine = engine
        #: What time it is: stamps ``received_at``, ``processed_at`` and claims.
        self.clock = clock
        #: The programs whose rows are claimed, each its share (None: every row, oldest first).
        #: A program's rows wait, pending, while the deployment does not serve it.
        self.programs = tuple(programs) if programs is not None else None

    # -- intake ---------------------------------------------------------------------------

    def store_many(self, deliveries: Sequence[Delivery], claimed: bool = False) -> dict[str, Stored]:
        """Store deliveries in one transaction; returns the outcome by fingerprint.

        Duplicates (within the batch or of rows already stored) create nothing. Raises
        ``TransientError`` when the database cannot be reached, so nothing is acknowledged.
        ``claimed``: the new rows are stored already claimed (``claim``) by the caller, who applies
        them at once; if it dies instead, its claim lapses and a worker takes them up.
        """
        unique: dict[str, Delivery] = {}
        for delivery in deliveries:
            unique.setdefault(delivery.fingerprint, delivery)
        # A fixed order of inserts keeps two batches with common fingerprints from deadlocking.
        ordered = sorted(unique.items())
        now = self.clock()
        rows = [
            {
                "fingerprint": fp,
                "event_type": d.event_type,
                "body": d.body,
                "received_at": now,
                "status": d.status,
                "attempts": 1 if claimed else 0,
                "entity_id": d.entity_id,
                "claimed_until": now + CLAIM_LEASE if claimed else None,
                "program": d.program,
            }
            for fp, d in ordered
        ]
        with self._transaction() as conn:
            created = self._insert_new(conn, rows)
            missing = [fp for fp in unique if fp not in created]
            existing = self._lookup(conn, missing) if missing else {}
        result = {fp: Stored(id=i, created=True, status=s) for fp, (i, s) in created.items()}
        result.update({fp: Stored(id=i, created=False, status=s) for fp, (i, s) in existing.items()})
        return result

    def _insert_new(self, conn: Connection, rows: list[dict]) -> dict[str, tuple[int, str]]:
        """Insert the rows not stored yet; returns the new ones as fingerprint -> (id, status)."""
        t = webhook_events
        dialect = conn.dialect.name
        if dialect == "postgresql" and rows:
            # One array per column: the statement's text is the same whatever the batch's size, so
            # neither psycopg nor PostgreSQL parses it again for every batch (bench/README.md).
            values = {name: [row[name] for row in rows] for name in _PER_ROW}
            values.update({name: rows[0][name] for name in _ALIKE})
            return {fp: (i, s) for fp, i, s in conn.execute(_UNNEST_INSERT, values)}
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert

            stmt = (
                insert(t)
                .on_conflict_do_nothing(index_elements=["fingerprint"])
                .returning(t.c.fingerprint, t.c.id, t.c.status)
            )
            # One statement per batch: SQLAlchemy sends the rows as multi-row VALUES.
            return {fp: (i, s) for fp, i, s in conn.execute(stmt, rows)}
        # Other dialects: one savepoint per row, a unique violation meaning "already there".
        created: dict[str, tuple[int, str]] = {}
        for row in rows:
            try:
                with conn.begin_nested():
                    result = conn.execute(t.insert().values(row))
            except sa.exc.IntegrityError:
                continue
            created[row["fingerprint"]] = (result.inserted_primary_key[0], row["status"])
        return created

    def _lookup(self, conn: Connection, fingerprints: list[str]) -> dict[str, tuple[int, str]]:
        t = webhook_events
        query = sa.select(t.c.fingerprint, t.c.id, t.c.status).where(t.c.fingerprint.in_(fingerprints))
        return {fp: (i, s) for fp, i, s in conn.execute(query)}

    # -- processing -----------------------------------------------------------------------

    def claim(self, limit: int = CLAIM_BATCH, ids: Sequence[int] | None = None) -> list[StoredDelivery]:
        """Take up to ``limit`` pending rows nobody holds, oldest first (of ``ids`` only, if given).

        A claim counts an attempt on each row and holds it until ``claimed_until``: other workers
        skip it meanwhile (``FOR UPDATE SKIP LOCKED`` while claiming on PostgreSQL and MariaDB;
        SQLite has one writer), and a worker that dies lets go of its rows when the claim lapses.
        A worker that lets go of rows after a passing error takes the attempt back
        (``record_errors``), so ``attempts`` counts the claims that lapsed or ran out of time, and
        the current one. A row with ``ALONE_AFTER`` of those is claimed alone, for a claim that
        grows with its attempts: if it is what kills its worker, it no longer takes batch-mates
        down with it, nor comes back every two minutes. Database blips and locks held by others
        never make a row be claimed alone.
        """
        t = webhook_events
        now = self.clock()
        with self._transaction() as conn:
            candidates = self._candidates(conn, now, limit, ids)
            if not candidates:
                return []
            if candidates[0].attempts >= ALONE_AFTER:
                chosen = [candidates[0].id]
                lease = min(CLAIM_LEASE * candidates[0].attempts, MAX_CLAIM_LEASE)
            else:
                chosen = [c.id for c in itertools.takewhile(lambda c: c.attempts < ALONE_AFTER, candidates)]
                lease = CLAIM_LEASE
            for chunk in chunks(chosen, 1000):
                conn.execute(t.update().where(t.c.id.in_(chunk))
                             .values(attempts=t.c.attempts + 1, claimed_until=now + lease))
            rows = []
            for chunk in chunks(chosen, 1000):
                rows += conn.execute(sa.select(*_EVENT_COLUMNS).where(t.c.id.in_(chunk)).order_by(t.c.id)).all()
        return [StoredDelivery(*row) for row in rows]

    def _candidates(self, conn: Connection, now: datetime, limit: int, ids: Sequence[int] | None) -> list:
        """Rows a claim may take, locked, in the order it takes them: oldest first; with several
        programs, the oldest of each in turn, so a flood of one program's deliveries delays none of
        the others' beyond its share of a claim."""
        t = webhook_events
        query = _claim(sa.select(t.c.id, t.c.attempts).where(_unheld(now)), limit)
        if ids is not None:
            query = query.where(t.c.id.in_(sorted(set(ids))))
        if self.programs is None:
            return conn.execute(query).all()
        each = [conn.execute(query.where(t.c.program == program)).all() for program in self.programs]
        turns = itertools.chain.from_iterable(itertools.zip_longest(*each))
        return [row for row in turns if row is not None][:limit]

    def claimable(self, older_than: timedelta = timedelta(0), program: str | None = None) -> int:
        """How many pending rows nobody holds were received more than ``older_than`` ago (of
        ``program``; None: of every program a claim takes)."""
        t = webhook_events
        now = self.clock()
        query = sa.select(sa.func.count()).select_from(t).where(_unheld(now), t.c.received_at < now - older_than)
        query = _matching(query, program=program)
        if program is None and self.programs is not None:
            query = query.where(t.c.program.in_(self.programs))
        with self._transaction() as conn:
            return conn.execute(query).scalar_one()

    def mark_done(self, event_ids: Sequence[int], conn: Connection | None = None,
                  status: DeliveryStatus = DeliveryStatus.PROCESSED) -> None:
        if not event_ids:
            return
        t = webhook_events
        statement = (
            t.update()
            .where(t.c.id.in_(sorted(event_ids)))
            .values(status=status, last_error=None, processed_at=self.clock(), claimed_until=None)
        )
        if conn is None:
            with self._transaction() as own:
                own.execute(statement)
        else:
            conn.execute(statement)

    def set_entity_ids(self, conn: Connection, entity_ids: dict[int, str]) -> None:
        """Name the record of rows stored without one."""
        if not entity_ids:
            return
        t = webhook_events
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("b_id")).values(entity_id=sa.bindparam("b_entity")),
            [{"b_id": i, "b_entity": e} for i, e in sorted(entity_ids.items())],
        )

    def mark_failures(self, failures: dict[int, str], conn: Connection | None = None) -> None:
        """Mark rows failed, each with its reason; a row already processed or ignored stays so."""
        if not failures:
            return
        t = webhook_events
        with (nullcontext(conn) if conn is not None else self._transaction()) as use:
            for event_id, reason in sorted(failures.items()):
                use.execute(
                    t.update()
                    .where(t.c.id == event_id, t.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.FAILED)))
                    .values(status=DeliveryStatus.FAILED, last_error=reason[:2000], claimed_until=None)
                )

    def record_errors(
        self, event_ids: Sequence[int], reason: str, *, timed_out: bool = False, retry_at: datetime | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Note why an attempt did not come to an outcome and let go of the rows: they stay
        pending, to be claimed again (from ``retry_at`` on, when given).

        The attempt their claim counted is taken back: a passing error (the database away, a lock
        another session holds) says nothing against a delivery, so it never makes one be claimed
        alone (``ALONE_AFTER``). Unless ``timed_out``: a job that ran out of time holding the rows
        may have been hung by one of them, as a worker that died holding them may have been killed
        by one; such attempts stay counted.
        """
        if not event_ids:
            return
        t = webhook_events
        values: dict[str, object] = {"last_error": reason[:2000], "claimed_until": retry_at}
        if not timed_out:
            values["attempts"] = sa.case((t.c.attempts > 0, t.c.attempts - 1), else_=0)
        with (nullcontext(conn) if conn is not None else self._transaction()) as use:
            for chunk in chunks(sorted(event_ids), 1000):
                use.execute(t.update().where(t.c.id.in_(chunk), t.c.status == DeliveryStatus.PENDING).values(**values))

    def deliveries(
        self, since: datetime | None = None, event_type: str | None = None, batch: int = 500,
        status: str | None = None, program: str | None = None,
    ) -> Iterator[StoredDelivery]:
        """Stored deliveries, oldest first, optionally from ``since``, of one type, in one status,
        of one program."""
        t = webhook_events
        after_id = 0
        while True:
            query = sa.select(*_EVENT_COLUMNS).where(t.c.id > after_id).order_by(t.c.id).limit(batch)
            query = _matching(query, since, event_type, status, program)
            with self._transaction() as conn:
                found = [StoredDelivery(*row) for row in conn.execute(query)]
            yield from found
            if len(found) < batch:
                return
            after_id = found[-1].id

    def delivery(self, event_id: int) -> StoredDelivery | None:
        """The stored delivery ``event_id``, read without counting an attempt."""
        t = webhook_events
        with self._transaction() as conn:
            row = conn.execute(sa.select(*_EVENT_COLUMNS).where(t.c.id == event_id)).one_or_none()
        return StoredDelivery(*row) if row is not None else None

    def entry(self, event_id: int) -> tuple[InboxRow, StoredDelivery] | None:
        """Inbox row ``event_id`` read once, as its facts and as its stored delivery; None when
        there is no such row."""
        t = webhook_events
        with self._transaction() as conn:
            found = conn.execute(sa.select(*_ROW_COLUMNS, t.c.body).where(t.c.id == event_id)).one_or_none()
        if found is None:
            return None
        row = InboxRow(*found[:-1])
        return row, StoredDelivery(row.id, row.event_type, found.body, row.status, row.attempts, row.received_at,
                                   row.fingerprint, row.entity_id, row.program)

    def rows(
        self,
        status: str | None = None,
        event_type: str | None = None,
        entity_id: str | None = None,
        before: int | None = None,
        limit: int = 50,
        program: str | None = None,
    ) -> list[InboxRow]:
        """Up to ``limit`` rows, newest first, matching every filter given (``program``: of one
        program); ``before`` pages on (only rows with a smaller id), so a page stays put while new
        deliveries arrive."""
        t = webhook_events
        query = sa.select(*_ROW_COLUMNS).order_by(t.c.id.desc()).limit(limit)
        filters = ((t.c.status, status), (t.c.event_type, event_type), (t.c.entity_id, entity_id),
                   (t.c.program, program))
        for column, value in filters:
            if value is not None:
                query = query.where(column == value)
        if before is not None:
            query = query.where(t.c.id < before)
        with self._transaction() as conn:
            return [InboxRow(*row) for row in conn.execute(query)]

    def count(self, since: datetime | None = None, event_type: str | None = None, status: str | None = None,
              program: str | None = None) -> int:
        """How many rows match: received from ``since`` on, of one event type, in one status, of
        one program."""
        t = webhook_events
        query = _matching(sa.select(sa.func.count()).select_from(t), since, event_type, status, program)
        with self._transaction() as conn:
            return conn.execute(query).scalar_one()

    def requeue_failed(
        self, since: datetime | None = None, event_type: str | None = None, batch: int = 1000,
        still_failing: Callable[[StoredDelivery], str | None] | None = None, program: str | None = None,
    ) -> Iterator[Requeued]:
        """Set failed rows back to pending, ``batch`` rows a transaction, by id; yields each batch
        once committed.

        Their attempts start again from 0, so they count the new tries only (and a row is claimed
        with batch-mates again, see ``ALONE_AFTER``); ``last_error`` stays until an attempt succeeds. Rows another run holds are
        skipped (PostgreSQL), not waited for. A row ``still_failing`` gives a reason for stays
        failed, with that reason as its last error, and is reported in ``Requeued.skipped``.
        """
        t = webhook_events
        after_id = 0
        while True:
            query = _matching(sa.select(*_EVENT_COLUMNS).where(t.c.id > after_id), since, event_type,
                              DeliveryStatus.FAILED, program)
            with self._transaction() as conn:
                events = [StoredDelivery(*row) for row in conn.execute(_claim(query, batch))]
                skipped = {}
                for event in events if still_failing is not None else ():
                    reason = still_failing(event)
                    if reason is not None:
                        skipped[event.id] = reason
                requeued = [(e.id, e.event_type) for e in events if e.id not in skipped]
                if requeued:
                    conn.execute(
                        t.update()
                        .where(t.c.id.in_([i for i, _ in requeued]), t.c.status == DeliveryStatus.FAILED)
                        .values(status=DeliveryStatus.PENDING, attempts=0)
                    )
                self.mark_failures(skipped, conn)
            if not events:
                return
            yield Requeued(requeued, sorted(skipped.items()))
            after_id = events[-1].id

    def requeue(self, event_id: int) -> str | None:
        """Hand row ``event_id`` back to the workers to apply again (``/ops``'s Replay), noting
        when that was asked (``replay_asked_at``); returns what it found (a ``RequeueAnswer``), None
        when there is no such row.

        A processed, ignored or failed row goes back to pending, its attempts from 0 (as
        ``requeue_failed``); a pending one stays as it is, whoever holds it. Never waits for a
        lock: a row another transaction holds is skipped (PostgreSQL, MariaDB) and reported
        ``RequeueAnswer.BUSY``, so the caller answers at once.
        """
        t = webhook_events
        now = self.clock()
        query = sa.select(t.c.status, (t.c.body == PRUNED_BODY).label("pruned")).where(t.c.id == event_id)
        with self._transaction() as conn:
            found = conn.execute(query.with_for_update(skip_locked=True)).one_or_none()
            if found is None:
                there = conn.execute(sa.select(t.c.id).where(t.c.id == event_id)).one_or_none()
                return RequeueAnswer.BUSY if there is not None else None
            if found.pruned:
                return RequeueAnswer.PRUNED
            if found.status == DeliveryStatus.PENDING:
                conn.execute(t.update().where(t.c.id == event_id).values(replay_asked_at=now))
                return RequeueAnswer.ALREADY_PENDING
            conn.execute(t.update().where(t.c.id == event_id, t.c.status == found.status)
                         .values(status=DeliveryStatus.PENDING, attempts=0, claimed_until=None, replay_asked_at=now))
        return RequeueAnswer.REQUEUED

    def prunable(self, before: datetime) -> Pruned:
        """What ``prune(before)`` would drop now, without dropping it."""
        t = webhook_events
        query = _prunable(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(t.c.body)), 0)), before)
        with self._transaction() as conn:
            rows, size = conn.execute(query).one()
        return Pruned(rows=rows, bytes=int(size))

    def prune(self, before: datetime, batch: int = 1000) -> Iterator[Pruned]:
        """Drop the raw bodies of done deliveries received before ``before``, ``batch`` rows a
        transaction, by id; yields each batch once committed.

        Only processed and ignored rows lose their body (it becomes ``PRUNED_BODY``); the row and
        its fingerprint stay, so the same bytes delivered again are still a duplicate. Pending and
        failed rows keep theirs: they are still to be processed. Rows another run holds are
        skipped (PostgreSQL), so several runs at once share the work; on SQLite they take turns.
        Running it again finds nothing to do.
        """
        t = webhook_events
        after_id = 0
        while True:
            query = _prunable(sa.select(t.c.id, sa.func.length(t.c.body)), before).where(t.c.id > after_id)
            with self._transaction() as conn:
                found = conn.execute(_claim(query, batch)).all()
                if found:
                    conn.execute(
                        t.update()
                        .where(t.c.id.in_([i for i, _ in found]), t.c.status.in_(DONE))
                        .values(body=PRUNED_BODY)
                    )
            if not found:
                return
            yield Pruned(rows=len(found), bytes=sum(size or 0 for _, size in found))
            after_id = found[-1][0]

    def summary(self, program: str | None = None) -> InboxSummary:
        """Counts by status, the oldest pending delivery and the last one processed, in one
        transaction (of ``program``; None: of every program)."""
        t = webhook_events
        with self._transaction() as conn:
            found = dict(conn.execute(_matching(sa.select(t.c.status, sa.func.count()), program=program)
                                      .group_by(t.c.status)).all())
            oldest = conn.execute(_matching(sa.select(sa.func.min(t.c.received_at)), status=DeliveryStatus.PENDING,
                                            program=program)).scalar()
            last = conn.execute(_matching(sa.select(sa.func.max(t.c.processed_at)), status=DeliveryStatus.PROCESSED,
                                          program=program)).scalar()
        return InboxSummary(
            counts={status: found.get(status, 0) for status in DeliveryStatus},
            oldest_pending_at=oldest,
            last_processed_at=last,
        )

    def backlog(self, program: str | None = None) -> Backlog:
        """How many deliveries are pending and failed, and the oldest pending one (of ``program``;
        None: of every program): cheap enough to answer anyone who asks (``/healthz``), as every
        read is a range of an index on the status (and program). ``summary`` reads the whole table."""
        t = webhook_events

        def count(status: str):
            query = _matching(sa.select(sa.func.count()).select_from(t), status=status, program=program)
            return query.scalar_subquery()

        oldest = _matching(sa.select(sa.func.min(t.c.received_at)), status=DeliveryStatus.PENDING,
                           program=program).scalar_subquery()
        with self._transaction() as conn:
            query = sa.select(count(DeliveryStatus.PENDING), count(DeliveryStatus.FAILED), oldest)
            pending, failed, oldest_at = conn.execute(query).one()
        return Backlog(pending=pending, failed=failed, oldest_pending_at=oldest_at)

    def ping(self) -> None:
        """Raise unless the database answers and holds the inbox table."""
        with self._transaction() as conn:
            conn.execute(sa.select(webhook_events.c.id).limit(0)).all()

    def _transaction(self):
        return transaction(self.engine)
