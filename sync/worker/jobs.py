"""What RQ runs, and where an error that reaches a job becomes what RQ does with the job: a passing
one (``TransientError``, RQ's time-out) has a delivery job or a backfill slice retried later on the
delivery backoff (RQ's ``Retry``), then failed; anything else fails the job. Each job is handed its
worker's context (``Context``) as its first argument (``takes_context``).

What becomes of one delivery or one record is decided below, where it is known: the processor
fails a delivery whose content cannot be applied, on its own row, and lets go of one that waits on
a lock (``sync.pipeline.processor``); the flush keeps each Salesforce record's outcome, and its
retry, on its outbox row (``sync.salesforce.flush``); when the next flush runs after Salesforce
could not be reached, and what a flush job does when it cannot, is ``sync.salesforce.schedule``'s
decision.

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
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from rq import Retry, get_current_job

from sync.core import backoff
from sync.core.clock import Clock
from sync.core.errors import SyncError, TransientError, caused_by
from sync.mapping import MappingSet
from sync.ops import metrics
from sync.pipeline import outcomes
from sync.pipeline.processor import BatchResult, Processor
from sync.salesforce.report import bulk_job_line
from sync.salesforce.schedule import FlushSchedule
from sync.settings import Settings
from sync.store.inbox import CLAIM_BATCH, Inbox, StoredDelivery
from sync.store.warehouse import Warehouse
from sync.worker.stopping import INTERRUPTIONS, stop_requested

log = logging.getLogger(__name__)

class Queue(Protocol):
    """What a job asks of the job queue (``sync.worker.queues.JobQueue``)."""

    def wake(self, *, force: bool = False) -> bool: ...

    def woken(self) -> None: ...

    def enqueue_backfill(self, run_id: int, description: str) -> str: ...

    def enqueue_notifications(self, delay: float | None = None) -> bool: ...

    def notifications_taken(self) -> None: ...

    def describe_current_job(self, description: str) -> None: ...

    def report_progress(self, text: str) -> None: ...


class Context(Protocol):
    """What a job needs of the process that runs it. The worker builds it once, at its start
    (``sync.services.Services`` is the one it builds), and hands it to every job it runs as the
    job's first argument (``sync.worker.queues.PartneroWorker``): a job never builds its own."""

    settings: Settings
    clock: Clock
    inbox: Inbox
    queue: Queue
    mappings: MappingSet
    warehouse: Warehouse
    processor: Processor

    @property
    def flush_schedule(self) -> FlushSchedule: ...

    def request_flush(self) -> None: ...


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

    def add(self, events: list[StoredDelivery], result: BatchResult) -> None:
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
        return describe(self.kinds, self.first, self.last)


def describe(kinds: Counter[str], first: int, last: int) -> str:
    """What the dashboard shows for a wake-up that applied deliveries (``kinds``: how many of each
    event type, inbox rows ``first`` to ``last``): "partner.created (inbox #5)", or
    "812 deliveries: partner.created x12, … (inbox #5..#900)"; never payload text.

    rq-dashboard renders descriptions unescaped, so an event type is shown only when it looks like
    one (mapped event types always do).
    """
    named: Counter[str] = Counter()
    for kind, n in kinds.items():
        named[kind if _EVENT_TYPE.match(kind) else "(unnamed event)"] += n
    count = sum(named.values())
    if count == 1:
        return f"{next(iter(named))} (inbox #{first})"
    shown = ", ".join(f"{kind} x{n}" for kind, n in sorted(named.items())[:6])
    more = ", …" if len(named) > 6 else ""
    return f"{count} deliveries: {shown}{more} (inbox #{first}..#{last})"


_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,48}\.[a-z][a-z0-9_]{0,48}$")


#: Our jobs: the worker hands them its context (``takes_context``).
_GIVEN_CONTEXT: set = set()


def _given_context(job):
    """Mark ``job`` as one the worker runs as ``job(context, *args)`` (``sync.worker.queues.ContextJob``)."""
    _GIVEN_CONTEXT.add(job)
    return job


def takes_context(func) -> bool:
    """Whether the worker hands ``func`` its context as its first argument: our jobs, not a
    function someone else put on our queues, which RQ runs as it is."""
    return func in _GIVEN_CONTEXT


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
        except (SyncError, *INTERRUPTIONS) as exc:
            exc.__cause__, exc.__suppress_context__ = None, True
            raise
        except Exception as exc:  # noqa: BLE001 - only its type may leave the job
            raise RuntimeError(f"{job.__name__} failed: {type(exc).__module__}.{type(exc).__qualname__} "
                               "(its text is withheld: it may quote a delivery's values)") from None

    return run


@_given_context
@_withholding
def drain(current: Context) -> Retry | str:
    """The job behind a wake-up: claim pending deliveries and apply them while any are pending."""
    current.queue.woken()  # deliveries stored from now on wake the next worker
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
                current.queue.wake()  # more are waiting: an idle worker can take a share
            outcome = _apply(current, events, again=again)
            if outcome is None:
                again = False
                continue
            if isinstance(outcome, Retry):
                return outcome
            again = True
            drained.add(events, outcome)
            if stop_requested() or time.monotonic() > deadline:
                current.queue.wake(force=True)  # a fresh job carries on after the other queue's turn
                break
    except (TransientError, *INTERRUPTIONS) as exc:  # while claiming: nothing to note on rows
        return _passing(current, [], exc)
    finally:
        current.queue.describe_current_job(drained.description())
    return drained.summary()


@_given_context
@_withholding
def process_events(current: Context, event_ids: list[int]) -> Retry | str:
    """Apply the inbox rows ``event_ids`` (those still pending and not held by another worker)."""
    try:
        events = current.inbox.claim(len(event_ids), ids=event_ids)
    except (TransientError, *INTERRUPTIONS) as exc:
        return _passing(current, [], exc)
    outcome = _apply(current, events)
    return outcome if isinstance(outcome, Retry) else outcome.summary()


def _apply(current: Context, events: list[StoredDelivery], again: bool = False) -> BatchResult | Retry | None:
    """Apply claimed rows in one transaction; each one's outcome is recorded on its row, then
    counted and logged (``sync.pipeline.outcomes``). On a passing error the rows are let go of, and the
    job is to be retried later; with ``again``, unless the job ran out of time, it may claim
    again at once instead: then None."""
    try:
        result = current.processor.process_batch(events)
    except (TransientError, *INTERRUPTIONS) as exc:
        if again and caused_by(exc, INTERRUPTIONS) is None:
            _let_go(current, events, str(exc))
            log.warning("inbox %s: %s; claiming again at once", _rows([e.id for e in events]), exc)
            return None
        return _passing(current, events, exc)
    outcomes.report(events, result, current.request_flush, current.clock())
    if result.notifying:  # committed: their messages may go now
        ask_for_notifications(current.queue)
    # Failed deliveries are recorded on their rows (status, /ops, metrics); the job did its work.
    return result


def ask_for_notifications(queue: Queue, delay: float | None = None) -> None:
    """Make sure a send job comes (now, or in ``delay`` seconds); Redis away is only logged: the
    rows wait in the database, and the worker's housekeeping asks again while any is due."""
    try:
        queue.enqueue_notifications(delay)
    except TransientError as exc:
        log.warning("%s", exc)


#: A send job that leaves rows to retry sooner than this asks for the next one itself; later
#: ones are the housekeeping's to ask for.
RETRY_HORIZON = 3600
#: A send job hands over to a fresh one after this long (well within its time-out, however slow
#: the endpoints are), so a long backlog never runs into the time-out half-way through a claim.
NOTIFY_SLICE_SECONDS = 60


@_given_context
@_withholding
def send_notifications(current: Context) -> str:
    """Post the mappings' due notifications (``sync.pipeline.notifier``); each outcome is on its
    row. Never fails a delivery: they were committed before any of this."""
    from sync.pipeline.notifier import Notifier
    from sync.store import notifications

    current.queue.notifications_taken()  # rows written from now on ask for the next job
    engine = current.inbox.engine
    deadline = time.monotonic() + NOTIFY_SLICE_SECONDS
    done = Notifier(engine, current.settings.webhook_urls, current.clock).send_due(
        should_stop=lambda: stop_requested() or time.monotonic() > deadline)
    with engine.connect() as conn:
        due = notifications.next_due(conn)
    if due is not None:  # rows left due (a slice ended) or to retry: the next job is asked for
        wait = max((due - current.clock()).total_seconds(), 0)
        if wait < RETRY_HORIZON:
            ask_for_notifications(current.queue, max(wait, 1))
    current.queue.describe_current_job(done.summary())
    return done.summary()


def _passing(current: Context, events: list[StoredDelivery], exc: BaseException) -> Retry:
    """A passing error, or the job's time-out: the rows stay pending, and the job is retried."""
    # The interruption may be behind ``exc``: the rollback that follows one may fail in turn.
    interruption = caused_by(exc, INTERRUPTIONS)
    if interruption is None:
        return _retry(current, events, str(exc))
    # Its time-out: the transaction was rolled back, nothing is half-written. A query cut off
    # half-way can leave its connection unusable, though: start again from fresh ones.
    current.inbox.engine.dispose()
    return _retry(current, events, f"the job was interrupted ({type(interruption).__name__}: {interruption})",
                  timed_out=True)


def _retry(current: Context, events: list[StoredDelivery], reason: str, timed_out: bool = False) -> Retry:
    """Leave the rows pending with the reason, and ask RQ to run the job again after a while."""
    _let_go(current, events, reason, timed_out)
    # Hours of retries: the rows stay pending, and the sweeper brings them back once the cause
    # has passed.
    return _later(f"inbox {_rows([e.id for e in events])}", reason, "the rows stay pending for the sweeper")


def _let_go(current: Context, events: list[StoredDelivery], reason: str, timed_out: bool = False) -> None:
    """Leave the rows pending with the reason, to be claimed again; their attempts are taken back
    unless the job ran out of time (``Inbox.record_errors``)."""
    for program, count in sorted(Counter(e.program for e in events).items()):
        metrics.ATTEMPTS.inc(count, outcome=metrics.RETRIED, program=program)
    try:
        if events:  # noted on the rows, which are let go of, to be claimed again
            current.inbox.record_errors([e.id for e in events], reason, timed_out=timed_out)
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


@_given_context
@_withholding
def flush_crm(current: Context) -> str:
    """Send the CRM outbox to Salesforce: the RQ job behind every flush (see ``sync.salesforce.schedule``)."""
    outcome = current.flush_schedule.run_job(should_stop=stop_requested)
    log.info("Salesforce flush: %s", outcome.text)
    _show_bulk_jobs(current, outcome.report.bulk_jobs)
    return outcome.text


def _show_bulk_jobs(current: Context, running: list[dict]) -> None:
    """The dashboard shows the Bulk API 2.0 jobs a flush left running (ids, objects, counts, states)."""
    if running:
        text = "; ".join(f"{bulk_job_line(j)} since {j['since']}" for j in running)
        current.queue.describe_current_job(f"Salesforce flush; {text}")
        current.queue.report_progress(text)


#: A backfill job hands over to a fresh one after this long, so a worker's deliveries and
#: Salesforce flushes get their turns while a long backfill runs.
BACKFILL_SLICE_SECONDS = 20


@_given_context
@_withholding
def backfill(current: Context, run_id: int) -> Retry | str:
    """The job behind ``partnero-sync backfill --in-worker``: carry backfill ``run_id`` on for a
    slice, then enqueue the next slice; the run's place is in the database (``backfill_runs``).
    The run is of one program: its lists are read with that program's key, and applied with its
    mappings as its deliveries."""
    from sync.partnero.backfill import name
    from sync.store.runs import Runs, RunStatus

    job = get_current_job()
    run = Runs(current.inbox.engine, current.clock).get(run_id)
    if run is None or run.done:
        return f"{name(run_id)}: nothing to do"
    filler = _backfill_of(current, run)
    called = filler.name(run_id)
    if not filler.runs.take_up(run_id, job.id if job else None):  # one conditional write: one taker
        run = filler.runs.get(run_id)
        return f"{called} is being carried on elsewhere (job {run.job_id})"
    deadline = time.monotonic() + BACKFILL_SLICE_SECONDS
    try:
        run = filler.run(run, should_stop=lambda: stop_requested() or time.monotonic() > deadline,
                         on_page=lambda progress: current.queue.report_progress(progress.line()))
    except TransientError as exc:  # Partnero or the database away past the client's retries
        return _later(called, str(exc), "the run stays stopped where it was, for "
                      "`partnero-sync backfill` to carry on")
    if run.status == RunStatus.STOPPED:  # its slice is over: the next one carries on after the other queues' turn
        current.queue.enqueue_backfill(run_id, f"{called}: carried on from {run.entity} page {run.next_page}")
    summary = (f"{called} {run.status}: {run.records:,} records, {run.applied:,} applied, "
               f"{run.unchanged:,} unchanged, {run.skipped:,} skipped, {run.failed:,} failed")
    current.queue.report_progress(summary)
    return summary


def _backfill_of(current: Context, run):
    """The ``Backfill`` of ``run``'s program: its key, its mappings. A program no longer served, or
    without a key, fails the run with a sentence naming it (``ConfigurationError``), for a person."""
    from sync.core.errors import ConfigurationError
    from sync.partnero.api import PartneroApi
    from sync.partnero.backfill import Backfill, name
    from sync.partnero.programs import mappings_of
    from sync.store.runs import Runs, RunStatus

    try:
        program = current.settings.program(run.program)
        mappings = mappings_of(current, run.program)  # UnknownProgram when it is not served
        return Backfill(current, PartneroApi.of(program, clock=current.clock), program=run.program, mappings=mappings)
    except ConfigurationError as exc:
        Runs(current.inbox.engine, current.clock).finish(run.id, RunStatus.FAILED, str(exc))
        log.error("%s of program %s: %s", name(run.id), run.program, exc)
        raise
