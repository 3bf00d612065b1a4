"""What RQ runs, and the one place where an error's kind becomes "retry later" or "fail".

A job is a wake-up: the worker that takes it claims pending inbox rows, oldest first, a batch at
a time (``Inbox.claim``), applies each batch in one transaction, and goes on while rows are
pending, so the speed of a drain does not depend on how the deliveries arrived. Every attempt and
outcome is recorded on each row: the inbox, not Redis, says what became of each delivery. When
the job ends, its description says which deliveries it applied.

Only what a delivery contains can fail it, once, with its reason, on its own row: the job still
succeeds, and its batch-mates are applied. Anything passing (the database or Redis away, a
deadlock, a job that ran out of time, a worker killed mid-job) leaves the rows pending: the job is
retried with backoff, and after that the sweeper brings them back. Nothing passing ever marks a
delivery failed, nor makes it a suspect (``Inbox.record_errors`` takes the attempt back). A drain
that meets one claims again at once, and backs off only when that try meets one too: a blip costs
one try. A delivery that waits on a lock another session holds waits alone (``sync.pipeline.processor``).

What a job leaves in Redis for RQ's registries and the dashboard (its description, result and,
when it fails, its traceback) never carries a value from a delivery: every job here is
``_withholding``, so an error it raises names its kind and says what we wrote, never a database's
or a library's own text about the data, and never the error behind it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from rq import Retry, get_current_job

from sync import services
from sync.core import backoff
from sync.core.errors import SyncError, TransientError, caused_by
from sync.ops import metrics
from sync.pipeline import outcomes
from sync.pipeline.processor import BatchResult
from sync.store.inbox import CLAIM_BATCH, Event
from sync.worker import queues

log = logging.getLogger(__name__)

#: A drain hands over to a fresh wake-up after this long, so the worker's other queue (Salesforce
#: flushes) gets its turn between two slices.
SLICE_SECONDS = 1


@dataclass
class Drained:
    """What a job applied, for its result and its description in the dashboard."""

    processed: int = 0
    ignored: int = 0
    failed: int = 0
    kinds: Counter = field(default_factory=Counter)
    first: int | None = None
    last: int | None = None

    def add(self, events: list[Event], result: BatchResult) -> None:
        self.processed += len(result.processed)
        self.ignored += len(result.ignored)
        self.failed += len(result.failed)
        self.kinds.update(e.event_type for e in events)
        ids = [e.id for e in events]
        self.first = min(ids + ([self.first] if self.first is not None else []))
        self.last = max(ids + ([self.last] if self.last is not None else []))

    def summary(self) -> str:
        return f"{self.processed} processed, {self.ignored} ignored, {self.failed} failed"

    def description(self) -> str:
        if self.first is None:
            return "wake-up: nothing was pending"
        return queues.describe(self.kinds, self.first, self.last)


def _withholding(job):
    """Run ``job`` so that an error it raises reaches RQ without any text but ours.

    RQ stores the formatted traceback (``exc_info``) with the failed job and shows it in the
    dashboard; Python prints every error in the chain, and the one behind ours may be the
    database's, quoting the row. So the chain is cut: our own errors (``SyncError``, whose texts
    are written to be safe) and RQ's interruptions go on alone, anything else as a ``RuntimeError``
    that names its type only.
    """

    @functools.wraps(job)
    def run(*args, **kwargs):
        try:
            return job(*args, **kwargs)
        except (SyncError, *queues.INTERRUPTIONS) as exc:
            exc.__cause__, exc.__suppress_context__ = None, True
            raise
        except Exception as exc:  # noqa: BLE001 - only its type may leave the job
            raise RuntimeError(f"{job.__name__} failed: {type(exc).__module__}.{type(exc).__qualname__} "
                               "(its text is withheld: it may quote a delivery's values)") from None

    return run


@_withholding
def drain() -> Retry | str:
    """The job behind a wake-up: claim pending deliveries and apply them while any are pending."""
    current = services.current()
    current.jobs.woken()  # deliveries stored from now on wake the next worker
    drained = Drained()
    deadline = time.monotonic() + SLICE_SECONDS
    # A passing error is met by claiming again at once, unless the previous try met one too: a
    # blip (a connection lost, a failover) costs one try, not a backoff; an outage waits for it.
    again = True
    try:
        while True:
            try:
                events = current.inbox.claim(CLAIM_BATCH)
            except TransientError as exc:
                if not again:
                    raise
                again = False
                log.warning("claiming deliveries: %s; claiming again at once", exc)
                continue
            if not events:
                break
            if len(events) == CLAIM_BATCH:
                current.jobs.wake()  # more are waiting: an idle worker can take a share
            outcome = _apply(current, events, again=again)
            if outcome is None:
                again = False
                continue
            if isinstance(outcome, Retry):
                return outcome
            again = True
            drained.add(events, outcome)
            if queues.stop_requested() or time.monotonic() > deadline:
                current.jobs.wake(force=True)  # a fresh job carries on after the other queue's turn
                break
    except (TransientError, *queues.INTERRUPTIONS) as exc:  # while claiming: nothing to note on rows
        return _passing(current, [], exc)
    finally:
        current.jobs.describe_current_job(drained.description())
    return drained.summary()


@_withholding
def process_events(event_ids: list[int]) -> Retry | str:
    """Apply the inbox rows ``event_ids`` (those still pending and not held by another worker)."""
    current = services.current()
    try:
        events = current.inbox.claim(len(event_ids), ids=event_ids)
    except (TransientError, *queues.INTERRUPTIONS) as exc:
        return _passing(current, [], exc)
    outcome = _apply(current, events)
    return outcome if isinstance(outcome, Retry) else outcome.summary()


def _apply(current, events: list[Event], again: bool = False) -> BatchResult | Retry | None:
    """Apply claimed rows in one transaction; each one's outcome is recorded on its row, then
    counted and logged (``sync.pipeline.outcomes``). On a passing error the rows are let go of, and the
    job is to be retried later; with ``again``, unless the job ran out of time, it may claim
    again at once instead: then None."""
    event_ids = [e.id for e in events]
    try:
        result = current.processor.process_batch(events)
    except (TransientError, *queues.INTERRUPTIONS) as exc:
        if again and caused_by(exc, queues.INTERRUPTIONS) is None:
            _let_go(event_ids, str(exc))
            log.warning("inbox %s: %s; claiming again at once", _rows(event_ids), exc)
            return None
        return _passing(current, event_ids, exc)
    outcomes.report(events, result, current.request_flush)
    # Failed deliveries are recorded on their rows (status, /ops, metrics); the job did its work.
    return result


def _passing(current, event_ids: list[int], exc: BaseException) -> Retry:
    """A passing error, or the job's time-out: the rows stay pending, and the job is retried."""
    # The interruption may be behind ``exc``: the rollback that follows one may fail in turn.
    interruption = caused_by(exc, queues.INTERRUPTIONS)
    if interruption is None:
        return _retry(event_ids, str(exc))
    # Its time-out: the transaction was rolled back, nothing is half-written. A query cut off
    # half-way can leave its connection unusable, though: start again from fresh ones.
    current.inbox.engine.dispose()
    return _retry(event_ids, f"the job was interrupted ({type(interruption).__name__}: {interruption})",
                  timed_out=True)


def _retry(event_ids: list[int], reason: str, timed_out: bool = False) -> Retry:
    """Leave the rows pending with the reason, and ask RQ to run the job again after a while."""
    _let_go(event_ids, reason, timed_out)
    # Hours of retries: the rows stay pending, and the sweeper brings them back once the cause
    # has passed.
    return _later(f"inbox {_rows(event_ids)}", reason, "the rows stay pending for the sweeper")


def _let_go(event_ids: list[int], reason: str, timed_out: bool = False) -> None:
    """Leave the rows pending with the reason, to be claimed again; their attempts are taken back
    unless the job ran out of time (``Inbox.record_errors``)."""
    metrics.ATTEMPTS.inc(len(event_ids), outcome=metrics.RETRIED)
    try:
        if event_ids:  # noted on the rows, which are let go of, to be claimed again
            services.current().inbox.record_errors(event_ids, reason, timed_out=timed_out)
    except TransientError:
        pass  # the database is the thing that is away; the caller's log line has the reason


def _later(what: str, reason: str, then: str) -> Retry:
    """Ask RQ to run the current job again after a while, on the delivery backoff. Once that is
    used up, raises ``TransientError``: the job goes to RQ's failed registry, where an operator
    sees it, and ``then`` says what becomes of its work."""
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job is not None else 0
    if retries >= len(backoff.DELIVERY_DELAYS):
        log.error("%s: %s; still failing after %d retries, %s", what, reason, retries, then)
        raise TransientError(f"{reason}; still failing after {retries} retries: {then}")
    delay = backoff.delay(backoff.DELIVERY_DELAYS, retries)
    # RQ does not record why a job asked to be retried: say it here.
    log.warning("%s: %s; retry %d of %d in %.0fs", what, reason, retries + 1, len(backoff.DELIVERY_DELAYS), delay)
    return Retry(max=len(backoff.DELIVERY_DELAYS), interval=int(delay))


def _rows(event_ids: list[int]) -> str:
    if not event_ids:
        return "(none claimed)"
    return "#" + ", #".join(str(i) for i in event_ids[:10]) + (" …" if len(event_ids) > 10 else "")


@_withholding
def flush_crm() -> str:
    """Send the CRM outbox to Salesforce: the RQ job behind every flush (see ``sync.salesforce.schedule``)."""
    outcome = services.current().flushes.run_job(should_stop=queues.stop_requested)
    log.info("Salesforce flush: %s", outcome.text)
    return outcome.text


#: A backfill job hands over to a fresh one after this long, so a worker's deliveries and
#: Salesforce flushes get their turns while a long backfill runs.
BACKFILL_SLICE_SECONDS = 20


@_withholding
def backfill(run_id: int) -> Retry | str:
    """The job behind ``partnero-sync backfill --in-worker``: carry backfill ``run_id`` on for a
    slice, then enqueue the next slice; the run's place is in the database (``backfill_runs``)."""
    from sync.partnero.api import PartneroApi
    from sync.partnero.backfill import Backfill
    from sync.store.runs import STOPPED

    current = services.current()
    job = get_current_job()
    filler = Backfill(current, PartneroApi(current.settings.partnero))
    run = filler.runs.get(run_id)
    if run is None or run.done:
        return f"backfill #{run_id}: nothing to do"
    if not filler.runs.take_up(run_id, job.id if job else None):  # one conditional write: one taker
        run = filler.runs.get(run_id)
        return f"backfill #{run_id} is being carried on elsewhere (job {run.job_id})"
    deadline = time.monotonic() + BACKFILL_SLICE_SECONDS
    try:
        run = filler.run(run, should_stop=lambda: queues.stop_requested() or time.monotonic() > deadline,
                         on_page=lambda progress: current.jobs.report_progress(progress.line()))
    except TransientError as exc:  # Partnero or the database away past the client's retries
        return _later(f"backfill #{run_id}", str(exc), "the run stays stopped where it was, for "
                      "`partnero-sync backfill` to carry on")
    if run.status == STOPPED:  # its slice is over: the next one carries on after the other queues' turn
        current.jobs.enqueue_backfill(run_id, f"backfill #{run_id}: carried on from {run.entity} page {run.next_page}")
    summary = (f"backfill #{run_id} {run.status}: {run.records:,} records, {run.applied:,} applied, "
               f"{run.unchanged:,} unchanged, {run.skipped:,} skipped, {run.failed:,} failed")
    current.jobs.report_progress(summary)
    return summary
