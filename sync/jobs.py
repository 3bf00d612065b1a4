"""What RQ runs, and the one place where an error's kind becomes "retry later" or "fail".

A job carries a batch of inbox rows (one row when deliveries arrive one at a time). Every
attempt and outcome is recorded on each row, so the inbox, not Redis, says what became of each
delivery; a job's description names its rows.

Only what a delivery contains can fail it, once, with its reason, on its own row: the job still
succeeds, and its batch-mates are applied. Anything passing (the database or Redis away, a
deadlock, a job that ran out of time, a worker killed mid-job) leaves the rows pending: the job is
retried with backoff, and after that the sweeper brings them back. Nothing passing ever marks a
delivery failed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from rq import Retry, get_current_job

from sync import backoff, logs, metrics, queue, services
from sync.errors import TransientError
from sync.inbox import FAILED, IGNORED, PROCESSED

log = logging.getLogger(__name__)


def process_events(event_ids: list[int]) -> Retry | str:
    """Process the inbox rows ``event_ids``: the RQ job for stored deliveries."""
    current = services.current()
    try:
        events = current.inbox.begin_attempts(event_ids)
        missing = set(event_ids) - {e.id for e in events}
        if missing:
            log.warning("inbox rows %s do not exist; skipped", sorted(missing))
        todo = [e for e in events if e.status not in (PROCESSED, IGNORED)]
        result = current.processor.process_batch(todo)
    except (TransientError, *queue.INTERRUPTIONS) as exc:
        interruption = _interruption(exc)
        if interruption is None:
            return _retry(event_ids, str(exc))
        # Its time-out: the transaction was rolled back, nothing is half-written. A query cut off
        # half-way can leave its connection unusable, though: start again from fresh ones.
        current.inbox.engine.dispose()
        return _retry(event_ids, f"the job was interrupted ({type(interruption).__name__}: {interruption})")
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
    return result.summary()


def _retry(event_ids: list[int], reason: str) -> Retry:
    """Leave the rows pending with the reason, and ask RQ to run the job again after a while."""
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job is not None else 0
    metrics.ATTEMPTS.inc(len(event_ids), outcome=metrics.RETRIED)
    try:
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


def _interruption(exc: BaseException) -> BaseException | None:
    """The interruption behind ``exc``, if any: the rollback that follows one may fail in turn."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, queue.INTERRUPTIONS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _rows(event_ids: list[int]) -> str:
    return "#" + ", #".join(str(i) for i in event_ids[:10]) + (" …" if len(event_ids) > 10 else "")


def flush_crm() -> str:
    """Send the CRM outbox to Salesforce: the RQ job behind every flush (see ``sync.flushing``)."""
    outcome = services.current().flushes.run_job(should_stop=queue.stop_requested)
    log.info("Salesforce flush: %s", outcome.text)
    return outcome.text
