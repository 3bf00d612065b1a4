"""A flush's Bulk API 2.0 jobs: when an object has more records due than a threshold, they go in
an ingest job rather than in Collections calls of 200, and later flushes read the job back.

The lifecycle, each step kept in the database so a worker may die between any two:

1. Enough due (a bounded count): create the job (``Open``); keep it (``crm_bulk_jobs``), then
   write its CSV page by page from the due rows, marking each row as travelling in it
   (``crm_outbox.bulk_job``, with the generation sent); upload the CSV, close the job
   (``UploadComplete``). A job is of one program and one object: its program's rows only. Rows in
   a job are not due; while a program's job of an object runs, the flush sends nothing of that
   program's object and nothing of its objects after it (children wait for their parents); the
   other programs go on.
   The object's next job starts no sooner than ``backoff.GATHER_SECONDS`` after this one: while
   its records gather, the flush stops at the object, as while its job runs.
2. Later flushes ask Salesforce how far it got, no sooner than ``backoff.BULK_POLL_DELAYS``
   after the last look. A job found ``Open`` was left by a flush that died before closing it:
   it is aborted and its rows are due again (sent in a new job, never the same job twice).
3. An ended job's results are read back in chunks and recorded exactly as a Collections answer
   would be (``Sender.settle``: synced with its id, waiting for its parent, retried, or refused
   with Salesforce's reason). Rows in neither result were not processed: due again. A job that
   failed as a whole refuses the rest of its records like a refused call (``Sender.record_refusal``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from itertools import islice
from typing import Protocol

from sqlalchemy.engine import Engine

from sync.core import backoff
from sync.core.clock import Clock
from sync.core.errors import TransientError
from sync.mapping import DEFAULT_PROGRAM
from sync.mapping.spec import Mapping, SalesforceTarget
from sync.salesforce import bulk
from sync.salesforce.bulk import ENDED, BulkApi, CsvJob, JobState
from sync.salesforce.client import CallRefused, RecordResult, SalesforceClient, without_values
from sync.salesforce.report import FlushReport
from sync.store import bulk_jobs, db
from sync.store.bulk_jobs import BulkJob
from sync.store.outbox import Outbox, Pending

log = logging.getLogger(__name__)

#: Due rows read (and results recorded) per transaction.
PAGE = 1000
#: The code recorded on the records of a job that failed as a whole (Salesforce gives a failed
#: job an ``errorMessage`` only, no code).
JOB_FAILED = "BULK_JOB_FAILED"
#: A job Salesforce no longer knows (jobs are deleted 7 days after they end).
JOB_MISSING = "Missing"
#: A job found Open this soon after its creation may still be uploading (its flush outlived the
#: flush lock): it is left alone until then. One whose upload failed is aborted at once.
OPEN_GRACE = timedelta(minutes=5)


class Sender(Protocol):
    """What the bulk part asks of the flush it is part of (``sync.salesforce.flush.Flusher``):
    the due rows as the flush reads them, each record as it sends it, and the one way outcomes
    and refusals are recorded, for Collections answers and job results alike."""

    engine: Engine
    outbox: Outbox
    client: SalesforceClient
    clock: Clock

    def due(self, target: SalesforceTarget, limit: int = ..., after: int = 0, *,
            program: str = ...) -> tuple[list[Pending], dict]: ...

    def record_of(self, mapping: Mapping, row: Pending, totals: dict) -> dict: ...

    def settle(self, target: SalesforceTarget, rows: list[Pending], answers: dict[int, RecordResult],
               report: FlushReport, bulk_job: str | None = None) -> None: ...

    def record_refusal(self, mapping: Mapping, rows: list[Pending], refusal: CallRefused, report: FlushReport,
                       bulk_job: str | None = None) -> str: ...


class BulkFlush:
    """The Bulk API 2.0 part of a flush (its ``Sender``)."""

    def __init__(self, flusher: Sender, threshold: int):
        self.flusher = flusher
        self.threshold = threshold
        self.api = BulkApi(flusher.client)
        #: The most a job's CSV holds (``bulk.MAX_JOB_BYTES``; tests make it small).
        self.max_bytes = bulk.MAX_JOB_BYTES
        #: The most records a job holds (``bulk.MAX_JOB_RECORDS``).
        self.max_records = bulk.MAX_JOB_RECORDS
        self.renew: Callable[[], object] = lambda: None

    def turn(self, mapping: Mapping, report: FlushReport, renew: Callable[[], object], *,
             program: str = DEFAULT_PROGRAM) -> float | None:
        """``program``'s turn at ``mapping``'s object in a flush: its running jobs looked at, a new
        job started when more than the threshold is due. Seconds until the next look while a job
        runs (the program's flush then waits), None when none does (Collections go on). ``renew`` is the flush's
        ``should_stop`` (``FlushSchedule``'s renews the lock and holds the API budget): asked
        before a job is created (a stop then starts none), and page by page to keep the lock,
        without waiting for its answer (a job is filled and read to its end, which a recording
        done twice would not harm)."""
        target = mapping.salesforce
        self.renew = renew
        with db.transaction(self.flusher.engine) as conn:
            running = bulk_jobs.running(conn, target.object, program=program)
        waits = [wait for job in running if (wait := self._look(mapping, job, report)) is not None]
        if not waits and self.threshold and self._enough_due(mapping, program):
            wait = self._gathering(target.object, program) or self._start(mapping, program, report)
            waits = [wait] if wait is not None else []
        if not waits:
            return None
        with db.transaction(self.flusher.engine) as conn:
            report.bulk_jobs = [{**job.as_dict(), "program": job.program} for job in bulk_jobs.running(conn)]
        return min(waits)

    def _gathering(self, object_name: str, program: str) -> float | None:
        """Seconds ``program``'s records of the object still gather before its next job (None: it
        may start now): a job starts no sooner than ``backoff.GATHER_SECONDS`` after the program's
        last one of the object, so a flood (a backfill) goes in a few large jobs rather than one
        per look."""
        with db.transaction(self.flusher.engine) as conn:
            last = bulk_jobs.last_started(conn, object_name, program=program)
        if last is None:
            return None
        left = (last + timedelta(seconds=backoff.GATHER_SECONDS) - self.flusher.clock()).total_seconds()
        return left if left > 0 else None

    def _enough_due(self, mapping: Mapping, program: str) -> bool:
        target = mapping.salesforce
        with db.transaction(self.flusher.engine) as conn:
            due = self.flusher.outbox.count_due(conn, target.object, target.signature, self.threshold + 1,
                                                upserts_only=target.hard_delete, program=program)
        return due > self.threshold

    # -- starting a job ----------------------------------------------------------------------------

    def _start(self, mapping: Mapping, program: str, report: FlushReport) -> float | None:
        """Create, fill, upload and close a job of ``program``'s due records of ``mapping``;
        seconds until its first look (None: nothing went in it)."""
        target, clock = mapping.salesforce, self.flusher.clock
        if self._over_budget(report):
            return None
        try:
            job_id = self.api.create(target.object, target.external_id)
        except CallRefused as refusal:  # the object, or its external id, refused: on its records
            if refusal.org_wide:
                raise
            self._refuse_due(mapping, program, refusal, report)
            return None
        finally:
            report.calls += 1
        with db.transaction(self.flusher.engine) as conn:
            bulk_jobs.start(conn, job_id, target.object, 0, clock(), program=program)
        data = CsvJob(bulk.columns(target), self.max_bytes, self.max_records)
        try:
            self._fill(mapping, program, job_id, data)
            if not data.records:  # what was due changed meanwhile
                self._abort(job_id, report)
                return None
            self.api.upload(job_id, data.file)
            state = self.api.close(job_id)
            report.calls += 2
        except CallRefused as refusal:  # the CSV or the job refused: on each of its records
            self._abort(job_id, report, refusal, mapping)
            if refusal.org_wide:
                raise
            return None
        except TransientError:  # the next flush aborts it at once, and its records go again
            with db.transaction(self.flusher.engine) as conn:
                bulk_jobs.seen(conn, job_id, JobState.OPEN, clock(), wait=0)
            raise
        finally:
            data.close()
        wait = backoff.delay(backoff.BULK_POLL_DELAYS, 0)
        with db.transaction(self.flusher.engine) as conn:
            bulk_jobs.seen(conn, job_id, state, clock(), wait=wait, records=data.records)
        log.info("Salesforce bulk job %s started: %d records", job_id, data.records,
                 extra={"object": target.object, "count": data.records, "program": program})
        return wait

    def _over_budget(self, report: FlushReport) -> bool:
        """Before a large job: the org's API usage read afresh (``GET limits``, one call), so the
        flush's budget check (``renew``, the schedule's ``should_stop``) judges by it. True when
        the flush is to stop rather than start the job."""
        try:
            self.flusher.client.read_limits()
        except CallRefused as refusal:  # the user may not read limits: the answers' headers will do
            if refusal.org_wide:
                raise
        finally:
            report.calls += 1
        return bool(self.renew())

    def _fill(self, mapping: Mapping, program: str, job_id: str, data: CsvJob) -> None:
        """Write ``program``'s due records into ``data`` page by page, each page's rows then marked as
        travelling in ``job_id`` (with the generation written), until none is left or the CSV
        is full."""
        target, flusher = mapping.salesforce, self.flusher
        after = 0
        while True:
            self.renew()
            rows, totals = flusher.due(target, PAGE, after, program=program)
            if not rows:
                return
            sent, full = [], False
            for row in rows:
                if target.hard_delete and row.tombstoned:
                    continue  # deleted one by one through REST, after the job
                if not data.add(flusher.record_of(mapping, row, totals)):
                    full = True  # the rest goes in the next job
                    break
                sent.append((row.id, row.generation))
            with db.transaction(flusher.engine) as conn:
                flusher.outbox.join_job(conn, job_id, sent)
            if full:
                return
            after = rows[-1].id

    # -- looking at a running job ------------------------------------------------------------------

    def _look(self, mapping: Mapping, job: BulkJob, report: FlushReport) -> float | None:
        """Ask Salesforce how far ``job`` got (when its time came); seconds until the next look
        while it runs, None once it is over and recorded."""
        clock = self.flusher.clock
        if job.next_poll_at is not None and job.next_poll_at > clock():
            return (job.next_poll_at - clock()).total_seconds()
        if job.state == JobState.OPEN and job.polls == 0 and clock() - job.created_at < OPEN_GRACE:
            return (job.created_at + OPEN_GRACE - clock()).total_seconds()
        try:
            return self._ask(mapping, job, report)
        except CallRefused as refusal:
            if refusal.org_wide:
                raise
            if refusal.code == "NOT_FOUND":  # Salesforce deleted it: its records go again
                self._release(job.job_id, JOB_MISSING)
                return None
            wait = backoff.delay(backoff.BULK_POLL_DELAYS, job.polls)
            log.warning("Salesforce refused to say how bulk job %s is: %s", job.job_id, refusal.code,
                        extra={"object": job.object, "program": job.program})
            with db.transaction(self.flusher.engine) as conn:
                bulk_jobs.seen(conn, job.job_id, job.state, clock(), wait=wait)
            return wait

    def _ask(self, mapping: Mapping, job: BulkJob, report: FlushReport) -> float | None:
        """``_look``'s question to Salesforce, and what follows from the job's state."""
        clock = self.flusher.clock
        report.calls += 1
        info = self.api.info(job.job_id)
        state = str(info.get("state"))
        if state == JobState.OPEN:  # its flush died before closing it
            log.warning("Salesforce bulk job %s was left open: aborted, its records go again", job.job_id,
                        extra={"object": job.object, "program": job.program})
            self._abort(job.job_id, report)
            return None
        if state not in ENDED:
            wait = backoff.delay(backoff.BULK_POLL_DELAYS, job.polls)
            with db.transaction(self.flusher.engine) as conn:
                bulk_jobs.seen(conn, job.job_id, state, clock(), wait=wait)
            return wait
        self._read(mapping, job, state, info, report)
        return None

    def _read(self, mapping: Mapping, job: BulkJob, state: str, info: dict, report: FlushReport) -> None:
        """Record an ended job's results on its rows; what is in neither result is due again, or,
        when the job failed as a whole, refused with its error."""
        target = mapping.salesforce
        for success, kind in ((True, "successfulResults"), (False, "failedResults")):
            if not success and info.get("numberRecordsFailed") == 0:
                continue  # none failed: one call less
            report.calls += 1
            results = self.api.results(job.job_id, kind)
            while chunk := list(islice(results, PAGE)):
                self.renew()
                answers = {r.get(target.external_id): bulk.result(r, success) for r in chunk}
                with db.transaction(self.flusher.engine) as conn:
                    rows = self.flusher.outbox.in_job(conn, job.job_id, [k for k in answers if k is not None])
                if rows:
                    self.flusher.settle(target, rows, {r.id: answers[r.external_id] for r in rows}, report,
                                         bulk_job=job.job_id)
        if state == JobState.FAILED:
            message = without_values(str(info.get("errorMessage") or "the job failed"))
            self._refuse_rest(mapping, job.job_id, CallRefused(JOB_FAILED, message), report)
            with db.transaction(self.flusher.engine) as conn:
                bulk_jobs.seen(conn, job.job_id, state, self.flusher.clock(), error=message)
        self._release(job.job_id, state)
        log.info("Salesforce bulk job %s ended: %s", job.job_id, state,
                 extra={"object": target.object, "program": job.program})

    # -- ending a job ------------------------------------------------------------------------------

    def _abort(self, job_id: str, report: FlushReport, refusal: CallRefused | None = None,
               mapping: Mapping | None = None) -> None:
        """Abort an open job; its rows are due again, or refused with ``refusal``."""
        try:
            self.api.abort(job_id)
            report.calls += 1
        except CallRefused as exc:  # it ended or went meanwhile: nothing of it runs either way
            log.warning("Salesforce bulk job %s could not be aborted: %s", job_id, exc.code)
        if refusal is not None and mapping is not None:
            self._refuse_rest(mapping, job_id, refusal, report)
        self._release(job_id, JobState.ABORTED)

    def _refuse_due(self, mapping: Mapping, program: str, refusal: CallRefused, report: FlushReport) -> None:
        """A job of ``program``'s records of ``mapping``'s object refused at its creation: on each
        of them due, as a refused Collections call would be."""
        target, refused, after = mapping.salesforce, 0, 0
        while rows := self.flusher.due(target, PAGE, after, program=program)[0]:
            reason = self.flusher.record_refusal(mapping, rows, refusal, report)
            refused, after = refused + len(rows), rows[-1].id
        report.refused_calls += 1
        log.error("Salesforce refused a bulk job of %d records: %s", refused, reason,
                  extra={"object": target.object, "count": refused, "program": program})

    def _refuse_rest(self, mapping: Mapping, job_id: str, refusal: CallRefused, report: FlushReport) -> None:
        """The job's rows still in it are refused as a whole call's would be."""
        refused, program = 0, DEFAULT_PROGRAM
        while True:
            with db.transaction(self.flusher.engine) as conn:
                rows = self.flusher.outbox.in_job(conn, job_id, limit=PAGE)
            if not rows:
                break
            reason = self.flusher.record_refusal(mapping, rows, refusal, report, bulk_job=job_id)
            refused, program = refused + len(rows), rows[0].program
        if refused:
            report.refused_calls += 1
            log.error("Salesforce refused a bulk job of %d records: %s", refused, reason,
                      extra={"object": mapping.salesforce.object, "count": refused, "program": program})

    def _release(self, job_id: str, state: str) -> None:
        """The job is over: its rows still in it are due again."""
        with db.transaction(self.flusher.engine) as conn:
            self.flusher.outbox.leave_job(conn, job_id)
            bulk_jobs.finish(conn, job_id, state, self.flusher.clock())
