"""Processing stored deliveries: each batch's plans go to the sinks and the inbox in one SQL transaction.

The fast path applies the whole batch in that transaction, without savepoints: a few statements
per table (``sync.pipeline.sinks``: the warehouse, the ledger, then the Salesforce outbox), and
one commit for many deliveries. When the database refuses the batch, or a statement gives up
waiting for a lock another session holds, that transaction is rolled back and the batch is
applied again, in a new one, delivery by delivery, each in a savepoint of its own: one the
database refuses fails alone, and one that waits on a lock waits alone (it is let go of, to be
tried again after a while, see ``BatchResult.waiting``) while the others are applied.
Deliveries are applied in the order of the records they touch, and the sinks in one order, so
concurrent batches lock rows in one global order and cannot deadlock; any order of deliveries
gives the same result, since every write merges by version.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync.core import backoff, envelope
from sync.core.envelope import MalformedDelivery
from sync.core.errors import PermanentError, TransientError
from sync.mapping import FieldProblem, MappingSet, Plan, entity_label, plan
from sync.pipeline.sinks import Found, Sink, Work, in_lock_order, notices_written
from sync.settings import DEFAULT_PROGRAM
from sync.store.db import describe_error, is_transient, waited_on_lock
from sync.store.inbox import DeliveryStatus, Inbox, StoredDelivery
from sync.store.outbox import Outbox
from sync.store.warehouse import Warehouse

log = logging.getLogger(__name__)

#: Delivery by delivery, a batch waits on locks at most this often: then the rest of it is let go
#: of untried, for the next claim (each wait lasts the engine's lock time-out).
LOCK_WAITS_PER_BATCH = 3
#: After this many waits on the records of one table, the batch's other deliveries to that table
#: wait too, without trying (the whole table is most likely locked).
LOCK_WAITS_PER_TABLE = 2
#: Why a delivery was let go of after waiting on a lock (stored as its last error).
WAITED = "waited on a lock another database session holds; tried again later"
#: Why one was let go of untried (stored as its last error).
UNTRIED = "not tried: its batch waited on locks another database session holds; tried again later"


class ProgramNotServed(PermanentError):
    """A stored delivery of a program this deployment no longer serves: it fails, saying so."""


@dataclass
class BatchResult:
    processed: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    #: Record ids learned while planning, for rows stored without one (before the inbox kept them).
    entity_ids: dict[int, str] = field(default_factory=dict)
    #: Deliveries that waited on a lock another session holds (or touch a record or table that
    #: did): still pending, let go of until the delivery backoff's first step has passed.
    waiting: list[int] = field(default_factory=list)
    #: Deliveries not tried because the batch had waited on locks long enough: still pending, let
    #: go of for the next claim.
    untried: list[int] = field(default_factory=list)
    #: Whether a processed delivery sends messages (``notify``): a worker then posts what is due.
    notifying: bool = False

    def summary(self) -> str:
        text = f"{len(self.processed)} processed, {len(self.ignored)} ignored, {len(self.failed)} failed"
        if self.waiting or self.untried:
            text += f", {len(self.waiting) + len(self.untried)} left pending behind a lock"
        return text


@dataclass
class Processor:
    engine: Engine
    inbox: Inbox
    #: The mappings of program ``default`` (of every delivery, when ``programs`` is not given).
    mappings: MappingSet
    warehouse: Warehouse
    #: Where Salesforce writes wait to be sent; None while CRM sync is off (then no outbox sink).
    outbox: Outbox | None = None
    #: Exceptions that interrupt the work from outside (a job's time-out): never a delivery's fault.
    interruptions: tuple[type[BaseException], ...] = ()
    #: Each program's mappings, by name (None: one program, ``default``, with ``mappings``).
    programs: Mapping[str, MappingSet] | None = None

    def mappings_for(self, program: str) -> MappingSet | None:
        """The mappings of ``program``; None when this deployment does not serve it."""
        if self.programs is None:
            return self.mappings if program == DEFAULT_PROGRAM else None
        return self.programs.get(program)

    def process(self, event: StoredDelivery) -> str:
        """Apply one delivery; returns its new status. Raises when it cannot be applied."""
        result = self.process_batch([event])
        if event.id in result.failed:
            raise PermanentError(result.failed[event.id])
        return DeliveryStatus.IGNORED if event.id in result.ignored else DeliveryStatus.PROCESSED

    def process_batch(self, events: list[StoredDelivery], planned_by: Mapping[str, Plan] | None = None) -> BatchResult:
        """Apply ``events`` and record each one's outcome on its inbox row.

        Applying a delivery again changes nothing: every write merges by version, the ledger adds
        only what its newest state lacks, and its constraint refuses a second booking. The
        deliveries of several programs go to the sinks program by program (``_apply_all``), each
        program's writes its own. Raises ``TransientError`` when the database is away (then nothing
        of the batch is committed).
        ``planned_by`` holds plans already made of some of the bodies, by fingerprint (a backfill
        plans each object to compare it with what is held): they are not made again.
        """
        result = BatchResult()
        work = self._plan_all(events, planned_by, result)
        try:
            try:
                # The fast way: the whole batch in one transaction, no savepoint, a few statements per table.
                with self.engine.begin() as conn:
                    self._apply_all(conn, work)
                    result.processed = [item.delivery.id for item in work]
                    self._record(conn, result)
            except Exception as exc:  # noqa: BLE001 - sorted below: passing, or one delivery's fault
                if self._passing(exc) and not self._locked_out(exc):
                    raise
                # Something in the batch was refused, or waited on a lock: go delivery by delivery
                # to find it. Only DEBUG: the delivery at fault gets its own line.
                log.debug("batch of %d refused (%s); applying one by one", len(work), _why(exc))
                result.processed = []
                with self.engine.begin() as conn:
                    self._one_by_one(conn, work, result)
                    self._record(conn, result)
        except sa.exc.SQLAlchemyError as exc:
            # A lost connection, a deadlock, a lock timeout: the next try finds the rows as they were.
            raise TransientError(f"database: {describe_error(exc)}") from exc
        processed = set(result.processed)
        result.notifying = any(notices_written(item) for item in work if item.delivery.id in processed)
        return result

    def _plan_all(self, events: list[StoredDelivery], planned_by: Mapping[str, Plan] | None,
                  result: BatchResult) -> list[Work]:
        """The plans of ``events``, in lock order; the ignored and failed ones go on ``result``."""
        work: list[Work] = []
        for event in events:
            try:
                known = planned_by.get(event.fingerprint) if planned_by is not None else None
                planned = known if known is not None else self._plan(event)
            except (MalformedDelivery, FieldProblem, ProgramNotServed) as exc:
                result.failed[event.id] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - whatever a delivery's content trips, it fails alone
                if self._passing(exc):
                    raise
                result.failed[event.id] = _unexpected(exc)
                continue
            if planned is None:
                result.ignored.append(event.id)
                continue
            work.append(Work(event, planned))
            label = entity_label(planned.change.key) if planned.change is not None else None
            if event.entity_id is None and label is not None:
                result.entity_ids[event.id] = label
        work.sort(key=_lock_order)
        return work

    def _locked_out(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a statement gave up waiting for a lock on some rows or tables, so
        the deliveries that do not need them can go on (SQLite locks the whole database)."""
        return waited_on_lock(exc) and self.engine.dialect.name != "sqlite"

    def _one_by_one(self, conn: Connection, work: list[Work], result: BatchResult) -> None:
        """Apply ``work`` delivery by delivery, each in a savepoint, onto ``result``.

        One that waits on a lock is let go of (``result.waiting``), and so are the others about
        the same record. The others to the same table are tried after the rest: after
        ``LOCK_WAITS_PER_TABLE`` waits on one table, they are let go of too; after
        ``LOCK_WAITS_PER_BATCH`` waits in all, whatever is left is let go of untried.
        """
        waits: Counter = Counter()
        locked_records: set[tuple[str, str, str]] = set()
        later: list[Work] = []

        def apply(event: StoredDelivery, planned: Plan) -> None:
            record = _record_of(Work(event, planned))
            if record in locked_records or waits[record[0]] >= LOCK_WAITS_PER_TABLE:
                result.waiting.append(event.id)
                return
            if waits.total() >= LOCK_WAITS_PER_BATCH:
                result.untried.append(event.id)
                return
            try:
                with conn.begin_nested():
                    self._apply_all(conn, [Work(event, planned)])
            except Exception as exc:  # noqa: BLE001
                if self._locked_out(exc):
                    waits[record[0]] += 1
                    locked_records.add(record)
                    result.waiting.append(event.id)
                    return
                if self._passing(exc):
                    raise
                result.failed[event.id] = _why(exc)
            else:
                result.processed.append(event.id)

        for item in work:
            if waits[_record_of(item)[0]]:
                later.append(item)  # its table is locked, maybe whole: the others first
            else:
                apply(*item)
        for event, planned in later:
            apply(event, planned)

    def _passing(self, exc: BaseException) -> bool:
        """Whether ``exc`` is not the delivery's fault: the database away or busy, the job
        interrupted. Those leave the whole batch to be tried again."""
        return is_transient(exc) or isinstance(exc, self.interruptions)

    def _record(self, conn: Connection, result: BatchResult) -> None:
        self.inbox.set_entity_ids(conn, result.entity_ids)
        self.inbox.mark_done(result.processed, conn)
        self.inbox.mark_done(result.ignored, conn, status=DeliveryStatus.IGNORED)
        self.inbox.mark_failures(result.failed, conn)
        retry_at = self.inbox.clock() + timedelta(seconds=backoff.delay(backoff.DELIVERY_DELAYS, 0))
        self.inbox.record_errors(result.waiting, WAITED, conn=conn, retry_at=retry_at)
        self.inbox.record_errors(result.untried, UNTRIED, conn=conn)

    def check(self, event: StoredDelivery) -> str | None:
        """Why the current mappings cannot apply ``event``, found without writing anything
        (its content; what the database would refuse is not known here); None when they can."""
        try:
            self._plan(event)
        except (MalformedDelivery, FieldProblem, ProgramNotServed) as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - as process_batch judges it
            return _unexpected(exc)
        return None

    def _plan(self, event: StoredDelivery) -> Plan | None:
        document = envelope.parse(event.body)  # the receiver's parse: what it stored, this reads
        if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
            raise MalformedDelivery('delivery has no "data" object')
        mappings = self.mappings_for(event.program)
        if mappings is None:
            raise ProgramNotServed(
                f"its program, {event.program}, is not one this deployment serves (PARTNERO_PROGRAMS): "
                "name it there again and requeue the delivery")
        mapping = mappings.for_event(event.event_type)
        if mapping is None:
            return None
        return plan(mapping, document, event.fingerprint, event.received_at, salesforce=self.outbox is not None,
                    program=event.program)

    @property
    def sinks(self) -> list[Sink]:
        """Where plans go, in lock order: the warehouse, the ledger, the outbox unless CRM sync is
        off, and the notifications."""
        return in_lock_order(self.warehouse, self.outbox, self.inbox.clock)

    def _apply_all(self, conn: Connection, work: list[Work]) -> None:
        """Hand ``work`` (in lock order: program by program) to each sink in turn, one program at
        a time, each sink given what the ones before it found of that program."""
        sinks = self.sinks
        for program, own in itertools.groupby(work, key=lambda item: item.delivery.program):
            mine = list(own)
            found = Found(program)
            for sink in sinks:
                sink.write(conn, mine, found)


def _record_of(item: Work) -> tuple[str, str, str]:
    """The warehouse table, key and program of the record a delivery changes (table and key "" when none)."""
    change = item.plan.change
    return (change.table, change.key, item.delivery.program) if change is not None else ("", "", item.delivery.program)


def _lock_order(item: Work) -> tuple:
    """Program by program (the sinks take each program's records in turn), then the sinks' order."""
    change = item.plan.change
    return (item.delivery.program, *((change.table, change.key, change.version) if change is not None
                                     else ("", "", None)))


def _why(exc: BaseException) -> str:
    """A failed delivery's reason: what the database refused, or what went wrong, never a value."""
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return f"database refused the write: {describe_error(exc)}"
    return _unexpected(exc)


def _unexpected(exc: BaseException) -> str:
    log.debug("unexpected error applying a delivery", exc_info=exc)  # the traceback, for developers
    return f"could not be applied: {type(exc).__name__} (see the worker's log at DEBUG for the traceback)"
