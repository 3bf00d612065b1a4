"""Sending the outbox to Salesforce: parents first, 200 records a call, an outcome per record.

One flush serves every program: it goes object by object, parents first across all programs, and
for each object program by program, each with its own mapping, its own ledger and its own
currency (a record's totals are its program's, never added across programs). Each record's
outcome is kept on its outbox row. A whole call Salesforce refuses (a field the org lacks, no
access) is recorded on every record of the call and the flush goes on with the other objects and
programs; one refused for the whole org (a session or login that cannot be renewed) ends it. When
and how often flushes run is ``sync.salesforce.schedule``'s business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping as Named

from sqlalchemy.engine import Engine

from sync.core import backoff
from sync.core.clock import Clock, system_clock
from sync.core.errors import TransientError
from sync.mapping import DEFAULT_PROGRAM, FieldProblem, MappingSet, salesforce_key
from sync.mapping.spec import Mapping, SalesforceTarget
from sync.ops import metrics
from sync.salesforce.bulk_flush import BulkFlush
from sync.salesforce.client import COLLECTION_LIMIT, CallRefused, RecordResult, SalesforceClient
from sync.salesforce.contract import mapping_sets, salesforce_order
from sync.salesforce.report import FlushReport
from sync.store import db, ledger
from sync.store.outbox import FOLD_BATCH, UNAVAILABLE, Outbox, OutboxStatus, Pending, RowOutcome, wire

log = logging.getLogger(__name__)


class Flusher:
    """Sends the outbox's due records, of every program, to one org; ``sync.salesforce.schedule``
    decides when."""

    def __init__(self, engine: Engine, mappings: MappingSet | Named[str, MappingSet], client: SalesforceClient,
                 outbox: Outbox | None = None, currency: str | None | Named[str, str | None] = None,
                 clock: Clock = system_clock, bulk_threshold: int = 0):
        """``mappings``: each program's mappings, by name (one set: the one program, ``default``);
        ``currency``: each program's (PARTNERO_<NAME>_CURRENCY), by name, or one for all; None:
        the one most used in the program."""
        self.engine = engine
        #: Each program's mappings, by name, in the order programs take their turns.
        self.mappings = {DEFAULT_PROGRAM: mappings} if isinstance(mappings, MappingSet) else dict(mappings)
        self.client = client
        self.outbox = outbox or Outbox(clock)
        #: Each program's configured currency; None: the one most used in it.
        self.currencies = ({name: currency.get(name) for name in self.mappings} if isinstance(currency, Named)
                           else dict.fromkeys(self.mappings, currency))
        #: What time it is: when records reached Salesforce (their lag).
        self.clock = clock
        #: Every object any program writes, parents first.
        self.objects = salesforce_order(self.mappings.values())
        #: The currency each program's totals are sent in, read at most once per flush (the most
        #: used one takes a look at the program's whole ledger).
        self._currency: dict[str, str | None] = {}
        self._parents = {r.object for s in mapping_sets(self.mappings.values()) for m in s.salesforce_objects()
                         for r in m.salesforce.references}
        #: An object with more than this many records due sends them in a Bulk API 2.0 job (0: never).
        self.bulk = BulkFlush(self, bulk_threshold)

    def mapping_of(self, program: str, object_name: str) -> Mapping | None:
        """The mapping that writes ``object_name`` for ``program`` (None: none does)."""
        return next((m for m in self.mappings[program].salesforce_objects() if m.salesforce.object == object_name),
                    None)

    def flush(self, *, should_stop: Callable[[], bool] = lambda: False,
              on_progress: Callable[[FlushReport], None] | None = None) -> FlushReport:
        """Send what is due, object by object, parents first, and each object program by
        program, checking ``should_stop`` between calls. A program whose bulk job runs for an
        object sends nothing of the objects after it (its children wait); the others go on.

        Raises ``TransientError`` when Salesforce cannot be reached (what was sent before that is
        recorded; the rest is due again at the next flush).
        """
        report = FlushReport()
        self._currency = {}
        self._fold_commissions(should_stop)
        waiting: set[str] = set()  # programs a running bulk job holds up
        for object_name in self.objects:
            for program in self.mappings:
                mapping = self.mapping_of(program, object_name)
                if mapping is None or program in waiting:
                    continue
                if should_stop():
                    report.stopped = "stopped between calls"
                    return report
                try:
                    if self._turn(mapping, program, report, should_stop, on_progress):
                        waiting.add(program)
                except CallRefused as refusal:  # org-wide (an object's own refusal is on its records)
                    report.org_refusal, report.stopped = refusal, "Salesforce refused every call"
                    return report
                if report.stopped:
                    return report
        return report

    def _turn(self, mapping: Mapping, program: str, report: FlushReport, should_stop: Callable[[], bool],
              on_progress: Callable[[FlushReport], None] | None) -> bool:
        """``program``'s turn at ``mapping``'s object: its bulk jobs, then Collections calls until
        none is due. True when a bulk job of it runs (the program's later objects wait for it)."""
        wait = self.bulk.turn(mapping, report, should_stop, program=program)
        if wait is not None:
            report.bulk_wait = wait if report.bulk_wait is None else min(report.bulk_wait, wait)
            return True
        while True:
            if should_stop():
                report.stopped = "stopped between calls"
                return False
            sent = self._send_batch(mapping, program, report)
            if on_progress is not None:
                on_progress(report)
            if sent < COLLECTION_LIMIT:
                return False

    def _fold_commissions(self, renew: Callable[[], bool]) -> None:
        """Mark every partner whose commission changed as due, program by program, a bounded
        batch per transaction: all of them go out in this flush (a backfill notes tens of
        thousands at a time). ``renew`` (the flush's ``should_stop``, whose answer waits for the
        first call) is called batch by batch: folding 100,000 changes takes longer than the flush
        lock lasts by itself."""
        for program, mappings in self.mappings.items():
            for mapping in mappings.salesforce_objects():
                if not mapping.salesforce.commission:
                    continue
                folded = FOLD_BATCH
                while folded == FOLD_BATCH:
                    renew()
                    with db.transaction(self.engine) as conn:
                        folded = self.outbox.fold_commission_changes(
                            conn, mapping.salesforce.object, mapping.entity, FOLD_BATCH, program=program,
                            external_id_of=lambda partner, m=mapping, p=program: _external_id(m, partner, p))

    def _send_batch(self, mapping: Mapping, program: str, report: FlushReport) -> int:
        """Send one call's worth of ``program``'s due records of ``mapping``; returns how many were
        due (0 after a refused call, so the flush moves on)."""
        target = mapping.salesforce
        rows, totals = self.due(target, program=program)
        if not rows:
            return 0
        # A mapping that opted in deletes tombstoned records; by default they are only updated.
        deletes = [r for r in rows if target.hard_delete and r.tombstoned]
        upserts = [r for r in rows if r not in deletes]
        try:
            answers = self._call(mapping, upserts, deletes, totals)
        except TransientError as exc:
            metrics.SALESFORCE_REFUSALS.inc(len(rows), program=program, object=target.object, code=UNAVAILABLE)
            with db.transaction(self.engine) as conn:
                self.outbox.postpone(conn, rows, str(exc))
            raise
        except CallRefused as refusal:
            report.calls += 1
            self._refused(mapping, rows, refusal, report)
            if refusal.org_wide:
                raise
            return 0
        report.calls += (1 if upserts else 0) + len(deletes)
        self.settle(target, rows, answers, report)
        return len(rows)

    def settle(self, target: SalesforceTarget, rows: list[Pending], answers: dict[int, RecordResult],
               report: FlushReport, bulk_job: str | None = None) -> None:
        """Record Salesforce's answer (by outbox row id) on each of ``rows`` (those of a
        Collections call, or read back from ``bulk_job``'s results, which they then leave: rows of
        one program), and wake that program's children of the parents that synced."""
        program = rows[0].program
        outcomes = [self._outcome(target.object, row, answers[row.id], report) for row in rows]
        synced = [row for row in rows if answers[row.id].success]
        with db.transaction(self.engine) as conn:
            self.outbox.record(conn, outcomes, target.signature)
            if bulk_job is not None:
                self.outbox.leave_job(conn, bulk_job, [row.id for row in rows])
            if synced and target.object in self._parents:
                self.outbox.wake_children_of(conn, [(row.object, row.external_id) for row in synced], program=program)
        now = self.clock()
        metrics.SALESFORCE_LAG.observe(((now - row.waiting_since).total_seconds()
                                        for row in synced if row.waiting_since is not None), program=program)
        report.by_object[target.object] = report.by_object.get(target.object, 0) + len(rows)

    def due(self, target: SalesforceTarget, limit: int = COLLECTION_LIMIT, after: int = 0, *,
            program: str = DEFAULT_PROGRAM) -> tuple[list[Pending], dict[str, ledger.Totals]]:
        """One call's worth of ``program``'s due records of ``target`` (``limit``, ids after
        ``after``), with the commission totals of their partners in ``program`` when the object
        receives them (else no totals), by Partnero partner id (``Pending.entity_id``)."""
        with db.transaction(self.engine) as conn:
            rows = self.outbox.due(conn, target.object, target.signature, limit, after, program=program)
            totals = {}
            if rows and target.commission:
                if program not in self._currency:
                    self._currency[program] = ledger.program_currency(conn, self.currencies.get(program),
                                                                      program=program)
                totals = ledger.salesforce_totals(conn, [_partner(r) for r in rows], self._currency[program],
                                                  program=program)
        return rows, totals

    def _call(self, mapping: Mapping, upserts: list[Pending], deletes: list[Pending],
              totals: dict[str, ledger.Totals]) -> dict[int, RecordResult]:
        """Upsert ``upserts`` in one call and delete each of ``deletes``; Salesforce's answer per
        outbox row id."""
        target = mapping.salesforce
        # Each call is counted where every answer of the org is seen (``SalesforceClient._watch``).
        answers = dict(zip(
            [r.id for r in upserts],
            self.client.upsert(target.object, target.external_id,
                               [self.record_of(mapping, row, totals) for row in upserts]),
        ))
        for row in deletes:
            answers[row.id] = self.client.delete(target.object, target.external_id, row.external_id)
        return answers

    @staticmethod
    def _outcome(object_name: str, row: Pending, answer: RecordResult, report: FlushReport) -> RowOutcome:
        """What becomes of ``row`` after Salesforce's ``answer``: synced, waiting for its parent,
        pending a retry, or failed; counted in ``report``."""
        if not answer.success:  # whatever then becomes of the record: waits, retries or fails
            metrics.SALESFORCE_REFUSALS.inc(program=row.program, object=object_name, code=answer.code)
        if answer.success:
            report.synced += 1
            return RowOutcome(row, OutboxStatus.SYNCED, salesforce_id=answer.id)
        if answer.missing_parent:
            report.waiting += 1
            return RowOutcome(row, OutboxStatus.WAITING, code=answer.code, message=answer.message,
                              retry_in=backoff.delay(backoff.RECORD_DELAYS, row.attempts),
                              waiting_for=answer.parent)
        if answer.transient:
            report.retrying += 1
            return RowOutcome(row, OutboxStatus.PENDING, code=answer.code, message=answer.message,
                              retry_in=backoff.delay(backoff.RECORD_DELAYS, row.attempts))
        report.refused(row.program)
        # Salesforce's message may quote the record's values: it stays on the row
        # (crm-errors, /ops), and the log names the code, the object and the program only.
        log.warning("Salesforce refused a record: %s (crm-errors shows why)", answer.code,
                    extra={"object": row.object, "program": row.program})
        return RowOutcome(row, OutboxStatus.FAILED, code=answer.code, message=answer.message)

    def _refused(self, mapping: Mapping, rows: list[Pending], refusal: CallRefused, report: FlushReport) -> None:
        """Record a refusal of the whole call on each of its records, to be tried again after a
        long wait, when the mapping changes, or on ``crm-retry``."""
        target = mapping.salesforce
        reason = self.record_refusal(mapping, rows, refusal, report)
        report.refused_calls += 1
        log.error("Salesforce refused a whole call of %d records: %s", len(rows), reason,
                  extra={"object": target.object, "count": len(rows), "program": rows[0].program})

    def record_refusal(self, mapping: Mapping, rows: list[Pending], refusal: CallRefused, report: FlushReport,
                       bulk_job: str | None = None) -> str:
        """Record ``refusal`` on each of ``rows`` (of one program; they then leave ``bulk_job``);
        the reason given."""
        target, program = mapping.salesforce, rows[0].program
        reason = refusal.reason(target.object, str(mapping.path))
        wait = backoff.delay(backoff.REFUSAL_DELAYS, min(r.attempts for r in rows))
        with db.transaction(self.engine) as conn:
            self.outbox.record(conn, [RowOutcome(r, OutboxStatus.FAILED, code=refusal.code, message=reason,
                                                 retry_in=wait) for r in rows], target.signature)
            if bulk_job is not None:
                self.outbox.leave_job(conn, bulk_job, [r.id for r in rows])
        metrics.SALESFORCE_REFUSALS.inc(len(rows), program=program, object=target.object, code=refusal.code)
        report.refused(program, len(rows))
        return reason

    def record_of(self, mapping: Mapping, row: Pending, totals: dict[str, ledger.Totals]) -> dict:
        """The record Salesforce gets for ``row`` (its program's ``mapping``): the fields the
        mapping names now, the external id, and the commission totals of ``totals`` (the
        program's, by partner id)."""
        target = mapping.salesforce
        # Only what the mapping names now: a field it stopped sending (say, one the org lacks) is
        # left out even from records stored before the change.
        record = {name: value for name, value in row.fields.items()
                  if name in target.named and not (name.endswith("__r") and value is None)}  # no parent: leave the lookup
        record[target.external_id] = row.external_id
        # The program currency's totals only: a partner with none in it gets zeros, and other
        # currencies and programs are never added in (``partnero-sync status`` reports them).
        mine = totals.get(_partner(row), ledger.ZERO)
        for total, name in target.commission.items():
            record[name] = wire(getattr(mine, total))
        return record


def _partner(row: Pending) -> str:
    """The Partnero id of a row's record (its partner's, for an object that receives commission
    totals): ``entity_id``, which the external id may differ from (the mapping's ``key``)."""
    return row.entity_id if row.entity_id is not None else row.external_id


def _external_id(mapping: Mapping, partner_id: str, program: str) -> str:
    """The external id of ``program``'s partner ``partner_id`` (the mapping's ``key``); the id
    itself when the key gives nothing usable (then the partner's own deliveries are refused by the
    mapping too, and the row this names stays without a state, never sent)."""
    try:
        return salesforce_key(mapping, partner_id, program)
    except FieldProblem:
        return partner_id
