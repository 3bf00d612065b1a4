"""Sending the outbox to Salesforce: parents first, 200 records a call, an outcome per record.

Each record's outcome is kept on its outbox row. A whole call Salesforce refuses (a field the org
lacks, no access) is recorded on every record of the call and the flush goes on with the other
objects; one refused for the whole org (a session or login that cannot be renewed) ends it. When
and how often flushes run is ``sync.salesforce.schedule``'s business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.engine import Engine

from sync.core import backoff
from sync.core.clock import Clock, system_clock
from sync.core.errors import TransientError
from sync.mapping import MappingSet
from sync.mapping.spec import Mapping, SalesforceTarget
from sync.ops import metrics
from sync.salesforce.bulk_flush import BulkFlush
from sync.salesforce.client import COLLECTION_LIMIT, CallRefused, RecordResult, SalesforceClient
from sync.salesforce.report import FlushReport
from sync.store import db, ledger
from sync.store.outbox import FOLD_BATCH, UNAVAILABLE, Outbox, OutboxStatus, Pending, RowOutcome, wire

log = logging.getLogger(__name__)


class Flusher:
    """Sends the outbox's due records to one org; ``sync.salesforce.schedule`` decides when."""

    def __init__(self, engine: Engine, mappings: MappingSet, client: SalesforceClient, outbox: Outbox | None = None,
                 currency: str | None = None, clock: Clock = system_clock, bulk_threshold: int = 0):
        self.engine = engine
        self.mappings = mappings
        self.client = client
        self.outbox = outbox or Outbox(clock)
        #: The program's currency (PARTNERO_CURRENCY); None: the one most used.
        self.currency = currency
        #: What time it is: when records reached Salesforce (their lag).
        self.clock = clock
        # The currency the totals are sent in, read at most once per flush (the most used one
        # takes a look at the whole ledger).
        self._program: str | None = None
        self._program_read = False
        self._parents = {r.object for m in mappings.salesforce_objects() for r in m.salesforce.references}
        #: An object with more than this many records due sends them in a Bulk API 2.0 job (0: never).
        self.bulk = BulkFlush(self, bulk_threshold)

    def flush(self, *, should_stop: Callable[[], bool] = lambda: False,
              on_progress: Callable[[FlushReport], None] | None = None) -> FlushReport:
        """Send what is due, object by object, parents first, checking ``should_stop`` between calls.

        Raises ``TransientError`` when Salesforce cannot be reached (what was sent before that is
        recorded; the rest is due again at the next flush).
        """
        report = FlushReport()
        self._program_read = False
        self._fold_commissions(should_stop)
        for mapping in self.mappings.salesforce_objects():
            if should_stop():
                report.stopped = "stopped between calls"
                return report
            try:
                report.bulk_wait = self.bulk.turn(mapping, report, should_stop)
            except CallRefused as refusal:  # org-wide (an object's own refusal is on its records)
                report.org_refusal, report.stopped = refusal, "Salesforce refused every call"
                return report
            if report.bulk_wait is not None:  # its job runs: this object and its children wait
                return report
            while True:
                if should_stop():
                    report.stopped = "stopped between calls"
                    return report
                try:
                    sent = self._send_batch(mapping, report)
                except CallRefused as refusal:  # org-wide: every other call would be refused too
                    report.org_refusal = refusal
                    report.stopped = "Salesforce refused every call"
                    return report
                if on_progress is not None:
                    on_progress(report)
                if sent < COLLECTION_LIMIT:
                    break
        return report

    def _fold_commissions(self, renew: Callable[[], bool]) -> None:
        """Mark every partner whose commission changed as due, a bounded batch per transaction: all
        of them go out in this flush (a backfill notes tens of thousands at a time). ``renew`` (the
        flush's ``should_stop``, whose answer waits for the first call) is called batch by batch:
        folding 100,000 changes takes longer than the flush lock lasts by itself."""
        for mapping in self.mappings.salesforce_objects():
            if mapping.salesforce.commission:
                folded = FOLD_BATCH
                while folded == FOLD_BATCH:
                    renew()
                    with db.transaction(self.engine) as conn:
                        folded = self.outbox.fold_commission_changes(conn, mapping.salesforce.object, mapping.entity,
                                                                     FOLD_BATCH)

    def _send_batch(self, mapping: Mapping, report: FlushReport) -> int:
        """Send one call's worth of ``mapping``'s due records; returns how many were due (0 after a
        refused call, so the flush moves on to the next object)."""
        target = mapping.salesforce
        rows, totals = self.due(target)
        if not rows:
            return 0
        # A mapping that opted in deletes tombstoned records; by default they are only updated.
        deletes = [r for r in rows if target.hard_delete and r.tombstoned]
        upserts = [r for r in rows if r not in deletes]
        try:
            answers = self._call(mapping, upserts, deletes, totals)
        except TransientError as exc:
            metrics.SALESFORCE_REFUSALS.inc(len(rows), object=target.object, code=UNAVAILABLE)
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
        Collections call, or read back from ``bulk_job``'s results, which they then leave), and
        wake the children of the parents that synced."""
        outcomes = [self._outcome(target.object, row, answers[row.id], report) for row in rows]
        synced = [row for row in rows if answers[row.id].success]
        with db.transaction(self.engine) as conn:
            self.outbox.record(conn, outcomes, target.signature)
            if bulk_job is not None:
                self.outbox.leave_job(conn, bulk_job, [row.id for row in rows])
            if synced and target.object in self._parents:
                self.outbox.wake_children_of(conn, [(row.object, row.external_id) for row in synced])
        now = self.clock()
        metrics.SALESFORCE_LAG.observe((now - row.waiting_since).total_seconds()
                                       for row in synced if row.waiting_since is not None)
        report.by_object[target.object] = report.by_object.get(target.object, 0) + len(rows)

    def due(self, target: SalesforceTarget, limit: int = COLLECTION_LIMIT,
             after: int = 0) -> tuple[list[Pending], dict[str, ledger.Totals]]:
        """One call's worth of ``target``'s due records (``limit``, ids after ``after``), with the
        commission totals of their partners when the object receives them (else no totals)."""
        with db.transaction(self.engine) as conn:
            rows = self.outbox.due(conn, target.object, target.signature, limit, after)
            totals = {}
            if rows and target.commission:
                if not self._program_read:
                    self._program, self._program_read = ledger.program_currency(conn, self.currency), True
                totals = ledger.salesforce_totals(conn, [r.external_id for r in rows], self._program)
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
            metrics.SALESFORCE_REFUSALS.inc(object=object_name, code=answer.code)
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
        report.failed += 1
        # Salesforce's message may quote the record's values: it stays on the row
        # (crm-errors, /ops), and the log names the code and the object only.
        log.warning("Salesforce refused a record: %s (crm-errors shows why)", answer.code,
                    extra={"object": row.object})
        return RowOutcome(row, OutboxStatus.FAILED, code=answer.code, message=answer.message)

    def _refused(self, mapping: Mapping, rows: list[Pending], refusal: CallRefused, report: FlushReport) -> None:
        """Record a refusal of the whole call on each of its records, to be tried again after a
        long wait, when the mapping changes, or on ``crm-retry``."""
        target = mapping.salesforce
        reason = self.record_refusal(mapping, rows, refusal, report)
        report.refused_calls += 1
        log.error("Salesforce refused a whole call of %d records: %s", len(rows), reason,
                  extra={"object": target.object, "count": len(rows)})

    def record_refusal(self, mapping: Mapping, rows: list[Pending], refusal: CallRefused, report: FlushReport,
                        bulk_job: str | None = None) -> str:
        """Record ``refusal`` on each of ``rows`` (which then leave ``bulk_job``); the reason given."""
        target = mapping.salesforce
        reason = refusal.reason(target.object, str(mapping.path))
        wait = backoff.delay(backoff.REFUSAL_DELAYS, min(r.attempts for r in rows))
        with db.transaction(self.engine) as conn:
            self.outbox.record(conn, [RowOutcome(r, OutboxStatus.FAILED, code=refusal.code, message=reason,
                                                 retry_in=wait) for r in rows], target.signature)
            if bulk_job is not None:
                self.outbox.leave_job(conn, bulk_job, [r.id for r in rows])
        metrics.SALESFORCE_REFUSALS.inc(len(rows), object=target.object, code=refusal.code)
        report.failed += len(rows)
        return reason

    def record_of(self, mapping: Mapping, row: Pending, totals: dict[str, ledger.Totals]) -> dict:
        target = mapping.salesforce
        # Only what the mapping names now: a field it stopped sending (say, one the org lacks) is
        # left out even from records stored before the change.
        record = {name: value for name, value in row.fields.items()
                  if name in target.named and not (name.endswith("__r") and value is None)}  # no parent: leave the lookup
        record[target.external_id] = row.external_id
        # The program currency's totals only: a partner with none in it gets zeros, and other
        # currencies are never added in (``partnero-sync status`` reports them).
        mine = totals.get(row.external_id, ledger.ZERO)
        for total, name in target.commission.items():
            record[name] = wire(getattr(mine, total))
        return record
