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
delivery failed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from rq import Retry, get_current_job

from sync import backoff, logs, metrics, queue, services
from sync.errors import TransientError, caused_by
from sync.inbox import CLAIM_BATCH, FAILED, IGNORED, PROCESSED, Event
from sync.processor import BatchResult

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
        return queue.describe(self.kinds, self.first, self.last)


def drain() -> Retry | str:
    """The job behind a wake-up: claim pending deliveries and apply them while any are pending."""
    current = services.current()
    current.jobs.woken()  # deliveries stored from now on wake the next worker
    drained = Drained()
    deadline = time.monotonic() + SLICE_SECONDS
    try:
        while True:
            events = current.inbox.claim(CLAIM_BATCH)
            if not events:
                break
            if len(events) == CLAIM_BATCH:
                current.jobs.wake()  # more are waiting: an idle worker can take a share
            outcome = _apply(current, events)
            if isinstance(outcome, Retry):
                return outcome
            drained.add(events, outcome)
            if queue.stop_requested() or time.monotonic() > deadline:
                current.jobs.wake(force=True)  # a fresh job carries on after the other queue's turn
                break
    except (TransientError, *queue.INTERRUPTIONS) as exc:  # while claiming: nothing to note on rows
        return _passing(current, [], exc)
    finally:
        current.jobs.describe_current_job(drained.description())
    return drained.summary()


def process_events(event_ids: list[int]) -> Retry | str:
    """Apply the inbox rows ``event_ids`` (those still pending and not held by another worker)."""
    current = services.current()
    try:
        events = current.inbox.claim(len(event_ids), ids=event_ids)
    except (TransientError, *queue.INTERRUPTIONS) as exc:
        return _passing(current, [], exc)
    outcome = _apply(current, events)
    return outcome if isinstance(outcome, Retry) else outcome.summary()


def _apply(current, events: list[Event]) -> BatchResult | Retry:
    """Apply claimed rows in one transaction and record, log and count each one's outcome."""
    event_ids = [e.id for e in events]
    try:
        result = current.processor.process_batch(events)
    except (TransientError, *queue.INTERRUPTIONS) as exc:
        return _passing(current, event_ids, exc)
    by_id = {e.id: e for e in events}
    committed_at = datetime.now(timezone.utc)
    metrics.LAG.observe((committed_at - by_id[i].received_at).total_seconds() for i in result.processed)
    for outcome, done in ((PROCESSED, result.processed), (IGNORED, result.ignored), (FAILED, result.failed)):
        metrics.ATTEMPTS.inc(len(done), outcome=outcome)

    def fields(event_id: int) -> dict:
        e = by_id[event_id]
        return logs.delivery_fields(e.id, e.event_type, result.entity_ids.get(e.id, e.entity_id), e.fingerprint)

    for event_id in result.processed:
        log.info("delivery processed", extra=fields(event_id))
    for event_id in result.ignored:
        log.info("delivery ignored: no mapping handles its event type", extra=fields(event_id))
    for event_id, reason in sorted(result.failed.items()):
        log.error("delivery failed: %s", reason, extra=fields(event_id))
    if result.processed:
        current.request_flush()
    # Failed deliveries are recorded on their rows (status, /ops, metrics); the job did its work.
    return result


def _passing(current, event_ids: list[int], exc: BaseException) -> Retry:
    """A passing error, or the job's time-out: the rows stay pending, and the job is retried."""
    # The interruption may be behind ``exc``: the rollback that follows one may fail in turn.
    interruption = caused_by(exc, queue.INTERRUPTIONS)
    if interruption is None:
        return _retry(event_ids, str(exc))
    # Its time-out: the transaction was rolled back, nothing is half-written. A query cut off
    # half-way can leave its connection unusable, though: start again from fresh ones.
    current.inbox.engine.dispose()
    return _retry(event_ids, f"the job was interrupted ({type(interruption).__name__}: {interruption})")


def _retry(event_ids: list[int], reason: str) -> Retry:
    """Leave the rows pending with the reason, and ask RQ to run the job again after a while."""
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job is not None else 0
    metrics.ATTEMPTS.inc(len(event_ids), outcome=metrics.RETRIED)
    try:
        if event_ids:  # noted on the rows, which are let go of, to be claimed again
            services.current().inbox.record_errors(event_ids, reason)
    except TransientError:
        pass  # the database is the thing that is away; the log line below has the reason
    if retries >= len(backoff.DELIVERY_DELAYS):
        # Hours of retries: the rows stay pending, and the sweeper brings them back once the
        # cause has passed. The job goes to RQ's failed registry, where an operator sees it.
        log.error("inbox %s: %s; still failing after %d retries, the rows stay pending for the sweeper",
                  _rows(event_ids), reason, retries)
        raise TransientError(f"{reason}; still failing after {retries} retries: the rows stay pending")
    delay = backoff.delay(backoff.DELIVERY_DELAYS, retries)
    # RQ does not record why a job asked to be retried: say it here.
    log.warning("inbox %s: %s; retry %d of %d in %.0fs",
                _rows(event_ids), reason, retries + 1, len(backoff.DELIVERY_DELAYS), delay)
    return Retry(max=len(backoff.DELIVERY_DELAYS), interval=int(delay))


def _rows(event_ids: list[int]) -> str:
    if not event_ids:
        return "(none claimed)"
    return "#" + ", #".join(str(i) for i in event_ids[:10]) + (" …" if len(event_ids) > 10 else "")


def flush_crm() -> str:
    """Send the CRM outbox to Salesforce: the RQ job behind every flush (see ``sync.flushing``)."""
    outcome = services.current().flushes.run_job(should_stop=queue.stop_requested)
    log.info("Salesforce flush: %s", outcome.text)
    return outcome.text
